"""The one exception type for expected, user-facing failures.

The CLI prints it as a single `error: ...` line and exits with `exit_code`, never with a traceback.
Programmer mistakes stay ordinary exceptions (and asserts)."""


class TalkalikeError(Exception):
    """An expected failure caused by the user's input or machine; the message says what to do."""

    exit_code = 2


class Interrupted(TalkalikeError):
    """Ctrl-C, with a message that says what was and was not done by then."""

    exit_code = 130
