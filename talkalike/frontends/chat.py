"""`talkalike chat RUN`: talk to the twin in the terminal.

Tokens stream as they are generated and each of the persona's messages gets its own line ("Noa: ..."). Commands:
/reset (forget the conversation), /save (write the transcript now), /quit. `--compare` also shows the base model's
reply to the same history (adapter off): the original report's before and after, live. `--base MODEL` alone chats
with a base model. Every session is appended to RUN/chats/YYYY-MM-DD.txt under a timestamp header.

    talkalike chat dana
    talkalike chat dana --compare --temperature 0.7
    printf 'hey\\n/quit\\n' | talkalike chat dana       # stdin need not be a terminal
"""

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from talkalike.decode.config import GenerationConfig, with_overrides
from talkalike.decode.stream import stream_reply
from talkalike.decode.twin import Twin, load_twin, talk_as
from talkalike.errors import TalkalikeError
from talkalike.files import private_folder, say, write_atomic
from talkalike.home import resolve_home

YOU = "you"  # the other side's label in the terminal and the transcript
COMMANDS = "/reset forgets the conversation, /save writes the transcript, /quit ends"


def transcript_header(when: datetime, header: str) -> str:
    """A session's first line in a transcript: `=== 2025-01-31 21:04:05 +0200 · header ===`."""
    return f"=== {when:%Y-%m-%d %H:%M:%S %z} · {header} ==="


def transcript_line(label: str, text: str) -> str:
    """One message as a transcript line, `label: text`; a message's later lines are indented by two spaces, so a
    line that happens to start with "you: " still reads back as part of its message."""
    return f"{label}: " + text.replace("\n", "\n  ")


class Transcript:
    """This session's lines, written to the day's log file after what earlier sessions left there."""

    def __init__(self, folder: Path, header: str):
        now = datetime.now(UTC).astimezone()
        self.path = folder / f"{now:%Y-%m-%d}.txt"
        self.lines = [transcript_header(now, header)]
        self.before: str | None = None  # the file as this session found it, read on the first save

    def add(self, line: str) -> None:
        """Remember one transcript line."""
        self.lines.append(line)

    def save(self) -> Path:
        """Rewrite the log file (earlier sessions + this one) through a temp file, so it is never half-written; the
        transcript is the user's own conversation, so only they can read it (0600 in a 0700 folder)."""
        private_folder(self.path.parent)
        if self.before is None:
            self.before = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        separator = "\n" if self.before and not self.before.endswith("\n\n") else ""
        return write_atomic(self.path, self.before + separator + "\n".join(self.lines) + "\n", private=True)


def _print_reply(twin: Twin, history: list[dict], config: GenerationConfig, use_adapter: bool, label: str,
                 out: TextIO, stream: Callable) -> list[str]:
    """Stream one turn to `out`, one line per message; returns the messages. Ctrl-C stops the reply early."""
    messages, current = [], ""
    try:
        for event in stream(twin, history, config, use_adapter=use_adapter):
            if event[0] == "text":
                if not current:
                    out.write(f"{label}: ")
                current += event[1]
                out.write(event[1])
                out.flush()
            elif event[0] == "end_message":
                out.write("\n")
                out.flush()
                messages.append(current)
                current = ""
    except KeyboardInterrupt:
        if current:
            out.write("\n")
            messages.append(current)
        say("(stopped)")
    if not messages:
        out.write(f"{label}: (no reply)\n")
        out.flush()
    return messages


def run_chat(twin: Twin, config: GenerationConfig, lines: Callable[[], str | None], out: TextIO,
             transcript: Transcript, compare: bool = False, stream: Callable = stream_reply) -> None:
    """The chat loop: read a line, stream the persona's messages, until /quit or the end of input; the transcript
    is saved however the loop ends."""
    history: list[dict] = []
    try:
        while True:
            line = lines()
            if line is None or line.strip() == "/quit":
                break
            text = line.strip()
            if not text:
                continue
            if text == "/reset":
                history = []
                transcript.add("--- /reset ---")
                say("(conversation forgotten)")
                continue
            if text == "/save":
                print(f"(transcript saved to {transcript.save()})", file=sys.stderr)
                continue
            if text.startswith("/"):
                print(f"(unknown command {text.split()[0]}; {COMMANDS})", file=sys.stderr)
                continue
            history.append({"role": "user", "content": text})
            try:
                messages = _print_reply(twin, history, config, True, twin.persona, out, stream)
            except TalkalikeError as error:  # e.g. a message longer than the context window: say so, go on
                history.pop()
                say(f"error: {error}")
                continue
            transcript.add(transcript_line(YOU, text))
            transcript.lines += [transcript_line(twin.persona, m) for m in messages]
            if compare:
                # Same history, adapter off; only the tuned reply goes on into the conversation.
                base_label = f"{twin.persona} (base)"
                base_messages = _print_reply(twin, history, config, False, base_label, out, stream)
                transcript.lines += [transcript_line(base_label, m) for m in base_messages]
            history += [{"role": "assistant", "content": m} for m in messages]
    finally:
        transcript.save()


def _reader(stdin: TextIO) -> Callable[[], str | None]:
    """Lines from the user: with line editing on a terminal, plain reads from a pipe (tests, scripts)."""
    if stdin.isatty():
        def read() -> str | None:
            try:
                return input(f"{YOU}> ")
            except EOFError:
                return None
        return read

    def read_pipe() -> str | None:
        line = stdin.readline()
        return line if line else None
    return read_pipe


def cmd_chat(args) -> int:
    """Chat with a run's twin (or a base model) in the terminal."""
    home = resolve_home(args.home)
    # Without --compare no base switch is needed: on CPU the adapter is merged once and cached (fast start).
    twin = load_twin(args.run, args.base, home, switchable=args.compare)
    if args.compare and not twin.has_adapter:
        raise TalkalikeError("--compare needs a run (the base reply is the run's model with its adapter off)")
    talk_as(twin, args.as_name, args.memories)
    config = with_overrides(twin.defaults, temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                            top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    folder = (twin.run_dir if twin.run_dir else home) / "chats"
    settings = (f"temperature {config.temperature}, repetition penalty {config.repetition_penalty}, "
                f"top-p {config.top_p}")
    transcript = Transcript(folder, f"{twin.name}{' (compare)' if args.compare else ''} · {settings}")
    say(f"talking to {twin.persona} ({twin.name}; {settings}). {COMMANDS}.")
    run_chat(twin, config, _reader(sys.stdin), sys.stdout, transcript, compare=args.compare, stream=stream_reply)
    say(f"(transcript saved to {transcript.path})")
    return 0
