"""Fuzz: malformed exports made by hypothesis go through `parse`, `import` and `dataset` in-process. Each run ends in
exit code 0, or in 2 with a single `error:` line and the store exactly as it was; never a traceback.

tests/sources/fuzz_corpus/ keeps inputs that once failed (expected.json: their exit codes); a test replays them all.
Add a file there whenever this test finds a new failure."""

import hashlib
import io
import json
import sqlite3
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talkalike.cli import main
from talkalike.home import store_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAYA = FIXTURES / "import" / "WhatsApp Chat with Maya.txt"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def cli(*argv) -> tuple[int, str]:
    """Exit code and stderr of one in-process run; an exception escaping main() fails the test with its traceback."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def store_dump(home: Path) -> str:
    """The store's logical content (independent of WAL checkpoints), or "" where there is none."""
    path = store_path(home)
    if not path.exists():
        return ""
    connection = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
    finally:
        connection.close()


def check(code: int, err: str, must_fail: bool) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    if must_fail:
        assert code == 2, err


def parse_and_import(home: Path, file: Path, must_fail: bool) -> None:
    """`parse` then `import` of one file; a failed import leaves the store unchanged."""
    check(*cli("--home", home, "parse", file), must_fail)
    before = store_dump(home)
    code, err = cli("--home", home, "import", file)
    check(code, err, must_fail)
    if code == 2:
        assert store_dump(home) == before


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data folder holding Maya's chat, so that a failed import has something to leave alone."""
    folder = tmp_path_factory.mktemp("home")
    assert cli("--home", folder, "import", MAYA)[0] == 0
    return folder


def _zip_of_maya() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_chat.txt", MAYA.read_bytes() * 20)
        z.writestr("IMG-0001.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    return buffer.getvalue()


ZIP = _zip_of_maya()


@FUZZ
@given(cut=st.integers(4, len(ZIP) - 1), flips=st.lists(st.tuples(st.integers(0, len(ZIP) - 1), st.integers(0, 255)),
                                                      min_size=1, max_size=8))
def test_a_broken_zip_is_one_error(home, tmp_path_factory, cut, flips):
    data = bytearray(ZIP)
    for at, value in flips:
        data[at] = value
    broken = tmp_path_factory.mktemp("zip") / "WhatsApp Chat with Maya.zip"
    broken.write_bytes(bytes(data[:cut]))
    # a flip may land where nothing is checked (a media file's bytes) and a cut after the chat may keep it readable
    parse_and_import(home, broken, must_fail=False)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes_are_one_error(home, tmp_path_factory, data):
    junk = tmp_path_factory.mktemp("bytes") / "WhatsApp Chat with Junk.txt"
    junk.write_bytes(data)
    parse_and_import(home, junk, must_fail=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MESSAGE_FIELDS = ["id", "type", "date", "from", "from_id", "text", "edited", "actor", "action", "title", "members",
                  "duration_seconds", "discard_reason", "sticker_emoji", "media_type", "photo", "file", "poll"]
CHAT_FIELDS = ["name", "type", "messages", "id"]


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(MESSAGE_FIELDS), json_values, min_size=1, max_size=6),
       chat_fields=st.dictionaries(st.sampled_from(CHAT_FIELDS), json_values, max_size=2),
       service=st.booleans(), account=st.booleans())
def test_telegram_json_with_random_types_in_any_field_is_read_or_one_error(home, tmp_path_factory, fields,
                                                                            chat_fields, service, account):
    message = {"id": 1, "type": "service" if service else "message", "date": "2023-03-15T09:15:00", "from": "Maya",
               "from_id": "user1", "text": "hi", "action": "invite_members", "actor": "Dana", "members": ["Noa"]}
    chat = {"name": "Maya", "type": "personal_chat", "id": 1, "messages": [message | fields]} | chat_fields
    export = {"chats": {"list": [chat]}} if account else chat
    folder = tmp_path_factory.mktemp("telegram")
    (folder / "result.json").write_text(json.dumps(export), encoding="utf-8")
    parse_and_import(home, folder / "result.json", must_fail=False)


@FUZZ
@given(day=st.integers(0, 99), month=st.integers(0, 99), year=st.integers(0, 99999), hour=st.integers(0, 99),
       minute=st.integers(0, 99), ios=st.booleans())
def test_headers_with_impossible_dates_are_unparsed_lines_or_one_error(home, tmp_path_factory, day, month, year, hour,
                                                                        minute, ios):
    stamp = f"{day}/{month}/{year}, {hour}:{minute:02}"
    line = f"[{stamp}:00] Maya: hi" if ios else f"{stamp} - Maya: hi"
    export = tmp_path_factory.mktemp("dates") / "WhatsApp Chat with Maya.txt"
    export.write_text(line + "\n" + line.replace("hi", "again") + "\n", encoding="utf-8")
    impossible = not (1 <= day <= 31 and 1 <= month <= 12 and hour <= 23 and minute <= 59) or 100 <= year < 1000
    parse_and_import(home, export, must_fail=impossible)


@FUZZ
@given(gap=st.floats() | st.sampled_from(["nan", "inf", "-1", "1e400", "x"]), share=st.floats(-1, 2),
       tokens=st.integers(-10, 10**6), out=st.sampled_from(["new", "file", "devnull", "under-file"]))
def test_dataset_options_and_outputs_are_used_or_one_error(home, tmp_path_factory, gap, share, tokens, out):
    folder = tmp_path_factory.mktemp("dataset")
    (folder / "file").write_text("keep")
    target = {"new": folder / "ds", "file": folder / "file", "devnull": Path("/dev/null"),
              "under-file": folder / "file" / "ds"}[out]
    before = store_dump(home)
    try:
        code, err = cli("--home", home, "dataset", "--me", "Dana", "--out", target, f"--gap-minutes={gap}",
                        f"--eval-share={share}", f"--max-tokens={tokens}")
    except SystemExit as stop:  # argparse refuses what is not a number at all, with its own usage line
        assert stop.code == 2 and gap == "x"
        return
    check(code, err, must_fail=out != "new")
    if code == 2:
        assert store_dump(home) == before
    assert (folder / "file").read_text() == "keep"


@pytest.mark.parametrize("name", sorted(json.loads((CORPUS / "expected.json").read_text())))
def test_inputs_that_once_failed_stay_fixed(home, tmp_path, name):
    expected = json.loads((CORPUS / "expected.json").read_text())[name]
    before = store_dump(home)
    for command in ("parse", "import"):
        code, err = cli("--home", home, command, CORPUS / name)
        check(code, err, must_fail=expected == 2)
        assert code == expected, err
    assert store_dump(home) == before
