"""Hostile and damaged input to `parse` and `import`: one `error:` line and exit code 2, never a traceback, never an
unbounded read, and nothing silently wrong. Each test is one case of issue 14, section 2."""

import json
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.sources import MAX_EXPORT_ENV, MAX_EXPORT_MB, whatsapp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAYA = FIXTURES / "import" / "WhatsApp Chat with Maya.txt"
ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *words: str) -> None:
    """Exit code 2 and a single `error:` line, the last on stderr (progress lines may come before it), holding every
    word; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    for word in words:
        assert word in lines[-1], (word, lines[-1])


# --- unbounded reads ---------------------------------------------------------------------------------------------


def test_a_zip_bomb_fails_at_once_without_inflating_its_chat(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MAX_EXPORT_ENV, "1")  # MiB: the same check the default 1 GiB makes, at a size a test can build
    bomb = tmp_path / "WhatsApp Chat with Maya.zip"
    line = "15/03/2023, 09:15 - Maya: " + "a" * 100 + "\n"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("_chat.txt", "w") as member:
        for _ in range(2000):
            member.write((line * 256).encode())  # 64 MiB of text, 200 KB zipped
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    started = time.monotonic()
    code, _, err = run(capsys, "--home", tmp_path, "parse", bomb)
    seconds, peak = time.monotonic() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_error(code, err, "more than 1 MiB", MAX_EXPORT_ENV)
    assert seconds < 2 and peak < 8 << 20


def test_the_size_cap_refuses_a_large_text_file_and_is_raised_by_its_variable(tmp_path, capsys, monkeypatch):
    big = tmp_path / MAYA.name
    big.write_bytes(MAYA.read_bytes() * 20_000)  # 14 MB
    monkeypatch.setenv(MAX_EXPORT_ENV, "2")
    one_error(*run(capsys, "--home", tmp_path, "parse", big)[::2], "more than 2 MiB")
    monkeypatch.setenv(MAX_EXPORT_ENV, "64")
    assert run(capsys, "--home", tmp_path, "parse", big)[0] == 0
    monkeypatch.setenv(MAX_EXPORT_ENV, "lots")
    one_error(*run(capsys, "--home", tmp_path, "parse", big)[::2], MAX_EXPORT_ENV)


def test_the_default_cap_is_generous_and_said_in_the_help(capsys):
    assert MAX_EXPORT_MB >= 1024
    for command in ("parse", "import"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert MAX_EXPORT_ENV in out and f"{MAX_EXPORT_MB} MiB" in out


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_is_refused_as_binary_from_its_first_bytes(tmp_path, capsys, device):
    started = time.monotonic()
    code, _, err = run(capsys, "--home", tmp_path, "parse", device)
    one_error(code, err, "binary data")
    assert time.monotonic() - started < 2


def test_an_endless_text_stream_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_EXPORT_ENV, "1")
    yes = subprocess.Popen(["yes", "15/03/2023, 09:15 - Maya: hi"], stdout=subprocess.PIPE)
    try:
        done = subprocess.run([sys.executable, "-m", "talkalike", "--home", str(tmp_path), "parse", "/dev/stdin"],
                              stdin=yes.stdout, capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        yes.kill()
        yes.wait()
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "more than 1 MiB" in done.stderr


# --- tracebacks --------------------------------------------------------------------------------------------------


def test_a_zip_with_a_damaged_deflate_stream_is_one_clear_error(tmp_path, capsys):
    archive = tmp_path / "WhatsApp Chat with Maya.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_chat.txt", MAYA.read_bytes() * 50)
    data = bytearray(archive.read_bytes())
    start = 30 + len("_chat.txt")  # the local header, then the deflate stream
    data[start + 10:start + 60] = b"\xff" * 50
    archive.write_bytes(bytes(data))
    one_error(*run(capsys, "--home", tmp_path, "import", archive)[::2], "damaged")


TELEGRAM_BASE = {"id": 7, "type": "message", "date": "2023-03-15T09:15:00", "from": "Maya", "from_id": "user1",
                 "text": "hi"}
WRONG = {
    "text as an int": {"text": 5},
    "a text list holding an int": {"text": ["a", 5]},
    "a text list holding null": {"text": ["a", None]},
    "sticker_emoji as an int": {"media_type": "sticker", "sticker_emoji": 7, "file": "x.webp"},
    "actor as an int": {"type": "service", "actor": 12, "action": "invite_members", "members": ["Noa"]},
    "title as an int": {"type": "service", "actor": "Dana", "action": "edit_group_title", "title": 3},
    "members holding an int": {"type": "service", "actor": "Dana", "action": "invite_members", "members": [1]},
    "from as a list": {"from": ["Maya"]},
    "date as an int": {"date": 1678871700},
}


@pytest.mark.parametrize("change", WRONG.values(), ids=WRONG.keys())
def test_a_telegram_field_of_the_wrong_type_names_the_message(tmp_path, capsys, change):
    export = tmp_path / "result.json"
    export.write_text(json.dumps({"name": "Maya", "type": "personal_chat", "messages": [TELEGRAM_BASE | change]}))
    one_error(*run(capsys, "--home", tmp_path, "import", export)[::2], "message 7")


def test_a_telegram_export_with_a_5000_digit_number_is_one_clear_error(tmp_path, capsys):
    export = tmp_path / "result.json"
    export.write_text('{"name": "Maya", "messages": [{"id": ' + "9" * 5000 + ', "date": "2023-03-15T09:15:00"}]}')
    one_error(*run(capsys, "--home", tmp_path, "import", export)[::2], "result.json")


def test_a_telegram_export_nested_100k_deep_is_one_clear_error(tmp_path, capsys):
    export = tmp_path / "result.json"
    export.write_text('{"name": "Maya", "messages": [' + "[" * 100_000 + "]" * 100_000 + "]}")
    one_error(*run(capsys, "--home", tmp_path, "import", export)[::2], "nested too deeply")


def test_a_date_that_overflows_is_an_unparsed_line(tmp_path, capsys):
    export = tmp_path / MAYA.name
    export.write_text("31/12/9999, 99:59 - Maya: the end of time\n15/03/2023, 09:15 - Maya: hi\n", encoding="utf-8")
    code, out, err = run(capsys, "--home", tmp_path, "import", export)
    assert code == 0 and "unparsed lines: 1" in out and "the time '99:59' does not exist" in out


def test_parse_into_a_full_disk_is_one_clear_error(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "talkalike", "--home", str(tmp_path), "parse", str(MAYA)],
                              stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot write the output") and len(done.stderr.splitlines()) == 1


# --- wrong messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_a_byte_order_mark_reads_like_utf8(tmp_path, capsys, encoding):
    bom = {"utf-16": b"", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}[encoding]
    odd = tmp_path / MAYA.name
    odd.write_bytes(bom + MAYA.read_text(encoding="utf-8").encode(encoding))
    _, plain, _ = run(capsys, "--home", tmp_path, "parse", MAYA)
    code, same, _ = run(capsys, "--home", tmp_path, "parse", odd)
    assert code == 0 and same == plain


def test_utf16_that_cannot_be_read_says_utf16(tmp_path, capsys):
    no_bom = tmp_path / "no-bom.txt"
    no_bom.write_bytes(MAYA.read_text(encoding="utf-8").encode("utf-16-le"))
    one_error(*run(capsys, "--home", tmp_path, "parse", no_bom)[::2], "UTF-16")
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"\xff\xfe" + "15/03/2023, 09:15 - Maya: hi".encode("utf-16-le") + b"\x00\xd8\x41\x00")
    one_error(*run(capsys, "--home", tmp_path, "parse", broken)[::2], "UTF-16")


def test_a_json_array_is_called_a_json_array(tmp_path, capsys):
    export = tmp_path / "result.json"
    export.write_text(json.dumps([{"date": "2023-03-15T09:15:00", "text": "hi"}]))
    one_error(*run(capsys, "--home", tmp_path, "parse", export)[::2], "JSON array", "Telegram")


# --- silently wrong data -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["C pass", "Python pass"])
@pytest.mark.parametrize(("before", "clock", "after"), [
    ("09:15", "24:00", "23:59"), ("09:15", "23:61", "23:59"), ("09:15", "99:99", "23:59"),
    ("9:15\u202fAM", "11:60\u202fPM", "11:59\u202fPM"), ("9:15\u202fAM", "13:00\u202fPM", "11:59\u202fPM"),
])
def test_a_time_that_does_not_exist_is_an_unparsed_line_not_a_later_day(monkeypatch, fast, before, clock, after):
    if not fast:
        monkeypatch.setattr(whatsapp, "_whatsapp_scan", None)
    text = (f"15/03/2023, {before} - Maya: before\n15/03/2023, {clock} - Maya: when?\n"
            f"a second line\n15/03/2023, {after} - Dana: after\n")
    parsed = whatsapp.parse(text, "Maya")
    if clock == "13:00\u202fPM":  # an impossible 12h hour keeps its 13, which is a real time
        assert [m.time.hour for m in parsed.messages] == [9, 13, 23] and not parsed.unparsed
        return
    assert [m.text for m in parsed.messages] == ["before", "after"]
    assert [(u.line_no, u.reason) for u in parsed.unparsed] == [
        (2, f"the time {clock!r} does not exist"), (3, "continues an unparsed line")]


def test_cr_only_line_endings_split_messages(tmp_path, capsys):
    old_mac = tmp_path / MAYA.name
    old_mac.write_bytes(MAYA.read_bytes().replace(b"\n", b"\r"))
    _, plain, _ = run(capsys, "--home", tmp_path, "parse", MAYA)
    _, same, _ = run(capsys, "--home", tmp_path, "parse", old_mac)
    assert same == plain and len(same.splitlines()) == 9


def test_an_ios_group_event_under_its_actors_name_is_a_system_event():
    text = ('[15/03/2023, 09:14:00] Trip: \u200eMessages and calls are end-to-end encrypted.\n'
            '[15/03/2023, 09:15:00] Dana: Dana changed the subject from "plans" to "Trip: Eilat"\n'
            '[15/03/2023, 09:16:00] Dana: I changed the subject, ok?\n')
    messages = whatsapp.parse(text, "Trip").messages
    assert [(m.sender, m.kind) for m in messages] == [(None, "system"), (None, "system"), ("Dana", "text")]
    assert messages[1].text == 'Dana changed the subject from "plans" to "Trip: Eilat"'


def test_a_chat_keeps_its_date_order_for_later_ambiguous_exports(tmp_path, capsys):
    us = tmp_path / "first" / "WhatsApp Chat with Ana.txt"
    us.parent.mkdir()
    us.write_text("03/14/2023, 09:15 - Ana: pi day\n04/02/2023, 10:00 - Ana: hi\n", encoding="utf-8")
    ambiguous = tmp_path / "later" / "WhatsApp Chat with Ana.txt"
    ambiguous.parent.mkdir()
    ambiguous.write_text("04/02/2023, 10:00 - Ana: hi\n04/03/2023, 11:00 - Ana: again\n", encoding="utf-8")
    assert run(capsys, "--home", tmp_path, "import", us)[0] == 0
    code, out, _ = run(capsys, "--home", tmp_path, "import", ambiguous)
    assert code == 0 and "added 1 new, skipped 1 already stored" in out and "as chat 'Ana' was stored" in out
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert json.loads(out)[0]["last"] == "2023-04-03T11:00:00"


def test_an_export_whose_dates_decide_another_order_than_its_chats_is_an_error_naming_date_order(tmp_path, capsys):
    guessed = tmp_path / "first" / "WhatsApp Chat with Ana.txt"  # a US export whose days are all 12 or less
    guessed.parent.mkdir()
    guessed.write_text("04/02/2023, 10:00 - Ana: hi\n04/03/2023, 11:00 - Ana: again\n", encoding="utf-8")
    us = tmp_path / "later" / "WhatsApp Chat with Ana.txt"
    us.parent.mkdir()
    us.write_text("04/03/2023, 11:00 - Ana: again\n04/14/2023, 09:15 - Ana: later\n", encoding="utf-8")
    assert run(capsys, "--home", tmp_path, "import", guessed)[0] == 0
    code, _, err = run(capsys, "--home", tmp_path, "import", us)
    one_error(code, err, "--date-order", "chats --remove Ana")
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert json.loads(out)[0]["messages"] == 2  # nothing re-added under other dates


def test_an_edited_message_in_a_later_export_updates_the_stored_text(tmp_path, capsys):
    first, later = tmp_path / "first" / MAYA.name, tmp_path / "later" / MAYA.name
    first.parent.mkdir(), later.parent.mkdir()
    first.write_text("15/03/2023, 09:15 - Maya: see you at 8\n15/03/2023, 09:16 - Dana: ok\n", encoding="utf-8")
    later.write_text("15/03/2023, 09:15 - Maya: see you at 9 <This message was edited>\n"
                     "15/03/2023, 09:16 - Dana: ok\n15/03/2023, 09:20 - Dana: great\n", encoding="utf-8")
    run(capsys, "--home", tmp_path, "import", first)
    code, out, _ = run(capsys, "--home", tmp_path, "import", later)
    assert code == 0 and "added 1 new, skipped 1 already stored, updated 1 edited since" in out
    from talkalike.store import Store

    with Store.open(tmp_path, readonly=True) as store:
        assert [(m.text, m.edited) for _, m in store.messages()] == [("see you at 9", True), ("ok", False),
                                                                     ("great", False)]


def test_a_telegram_account_chat_named_like_a_whatsapp_chat_is_imported_under_a_name_the_error_gives(tmp_path, capsys):
    account = FIXTURES / "telegram" / "account" / "result.json"
    assert run(capsys, "--home", tmp_path, "import", MAYA, "--chat", "Maya Levi")[0] == 0
    code, _, err = run(capsys, "--home", tmp_path, "import", account)
    one_error(code, err, "--chat 'Maya Levi=Maya Levi (telegram)'")
    code, out, _ = run(capsys, "--home", tmp_path, "import", account, "--chat", "Maya Levi=Maya Levi (telegram)")
    assert code == 0 and "chat 'Maya Levi (telegram)'" in out
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert {c["name"]: c["source"] for c in json.loads(out)} == {
        "Maya Levi": "whatsapp", "Maya Levi (telegram)": "telegram", "Hiking Crew": "telegram",
        "Old Flatmates": "telegram"}


def test_a_plain_chat_name_for_an_account_export_points_to_the_renaming_form(tmp_path, capsys):
    account = FIXTURES / "telegram" / "account" / "result.json"
    one_error(*run(capsys, "--home", tmp_path, "import", account, "--chat", "X")[::2], "--chat", "=")
    assert not os.path.exists(tmp_path / "talkalike.db")
