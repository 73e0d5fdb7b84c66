"""`talkalike parse`, `import`, `chats` and `people` run in-process, with the data folder in a temp dir."""

import json
import re
import zipfile
from pathlib import Path

import pytest

from talkalike.cli import main
from talkalike.home import store_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAYA = FIXTURES / "import" / "WhatsApp Chat with Maya.txt"
TELEGRAM = FIXTURES / "telegram"
MAYA_ENTRIES = 9  # entries in MAYA: 1 system, 7 text (one multi-line), 1 media


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ios_text(android: str) -> str:
    """MAYA rewritten in the iOS shape: `[d/m/y, H:M:S] Name: text`."""
    return re.sub(r"^(\d\d/\d\d/\d{4}), (\d\d:\d\d) - ", r"[\1, \2:00] ", android, flags=re.M)


def test_parse_prints_one_json_object_per_entry_in_file_order_and_stores_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "--home", tmp_path, "parse", MAYA)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == MAYA_ENTRIES
    assert all(set(row) == {"time", "sender", "text", "kind", "edited"} for row in rows)
    assert rows[0]["kind"] == "system" and rows[0]["time"] == "2023-03-15T09:14:00"
    assert rows[3]["text"] == "did you see the email\nabout friday?\n\nit's at 8"
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    assert "מה קורה? 🙂" in out  # ensure_ascii=False: text is readable, not \u escapes
    assert not store_path(tmp_path).exists()


def test_parse_of_a_whole_account_telegram_export_names_each_entrys_chat(tmp_path, capsys):
    code, out, _ = run(capsys, "--home", tmp_path, "parse", TELEGRAM / "account" / "result.json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 9 + 8 + 2
    assert {r["chat"] for r in rows} == {"Maya Levi", "Hiking Crew", "Old Flatmates"}


def test_import_reports_kinds_senders_dates_format_and_counts(tmp_path, capsys):
    code, out, err = run(capsys, "--home", tmp_path, "import", MAYA)
    assert code == 0
    assert "chat 'Maya'" in out
    assert f"entries: {MAYA_ENTRIES}" in out
    assert re.search(r"text 7, media 1, system 1", out)
    assert re.search(r"senders: (Maya 5, Dana 3|Dana 3, Maya 5)", out) or "Maya 5" in out and "Dana 3" in out
    assert "2023-03-15 09:14 to 2023-03-16 18:05" in out
    assert "unparsed lines: 0" in out
    assert f"added {MAYA_ENTRIES} new, skipped 0 already stored" in out
    assert store_path(tmp_path).exists()


def test_importing_the_same_file_twice_adds_nothing_the_second_time(tmp_path, capsys):
    run(capsys, "--home", tmp_path, "import", MAYA)
    code, out, _ = run(capsys, "--home", tmp_path, "import", MAYA)
    assert code == 0 and f"added 0 new, skipped {MAYA_ENTRIES} already stored" in out


def test_a_later_overlapping_export_adds_only_its_new_messages(tmp_path, capsys):
    lines = MAYA.read_text(encoding="utf-8").splitlines(keepends=True)
    early, later = tmp_path / "early", tmp_path / "later"
    early.mkdir(), later.mkdir()
    (early / MAYA.name).write_text("".join(lines[:9]), encoding="utf-8")  # up to the first "ok"
    (later / MAYA.name).write_text("".join(lines[7:]) + "17/03/2023, 07:00 - Dana: new one\n", encoding="utf-8")
    run(capsys, "--home", tmp_path, "import", early / MAYA.name)
    code, out, _ = run(capsys, "--home", tmp_path, "import", later / MAYA.name)
    assert code == 0
    # new: the second "ok", the Hebrew, "all good", "new one"; already stored: the media and the first "ok"
    assert "added 4 new, skipped 2 already stored" in out
    code, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert json.loads(out)[0]["messages"] == MAYA_ENTRIES + 1


def test_import_takes_a_chat_name(tmp_path, capsys):
    run(capsys, "--home", tmp_path, "import", MAYA, "--chat", "Sister")
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert [c["name"] for c in json.loads(out)] == ["Sister"]


def test_an_ios_zip_with_media_is_read_from_its_chat_txt_and_named_after_the_zip(tmp_path, capsys):
    archive = tmp_path / "WhatsApp Chat - Maya.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("_chat.txt", ios_text(MAYA.read_text(encoding="utf-8")))
        z.writestr("00000012-PHOTO-2023-03-15-09-20-00.jpg", b"\xff\xd8\xff\xe0binary")
        z.writestr("__MACOSX/._chat.txt", b"\x00\x05\x16\x07 macOS resource fork")  # added when re-zipped on a Mac
    code, out, _ = run(capsys, "--home", tmp_path, "parse", archive)
    assert code == 0 and len(out.splitlines()) == MAYA_ENTRIES
    code, out, _ = run(capsys, "--home", tmp_path, "import", archive)
    assert code == 0 and "chat 'Maya'" in out


def test_an_android_zip_is_read_from_its_named_txt_even_beside_a_shared_text_document(tmp_path, capsys):
    archive = tmp_path / "WhatsApp Chat with Maya.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(MAYA.name, MAYA.read_bytes())
        z.writestr("shopping list.txt", "milk\neggs\n")
        z.writestr("IMG-20230315-WA0001.jpg", b"\xff\xd8\xff\xe0binary")
    code, out, _ = run(capsys, "--home", tmp_path, "import", archive)
    assert code == 0 and "chat 'Maya'" in out and f"added {MAYA_ENTRIES} new" in out


def test_a_byte_order_mark_and_crlf_endings_read_the_same(tmp_path, capsys):
    odd = tmp_path / MAYA.name
    odd.write_bytes(b"\xef\xbb\xbf" + MAYA.read_bytes().replace(b"\n", b"\r\n"))
    _, plain, _ = run(capsys, "--home", tmp_path, "parse", MAYA)
    _, same, _ = run(capsys, "--home", tmp_path, "parse", odd)
    assert same == plain


def test_the_date_order_flag_reaches_the_parser(tmp_path, capsys):
    ambiguous = tmp_path / "WhatsApp Chat with Ana.txt"
    ambiguous.write_text("03/04/2023, 09:15 - Ana: hi\n05/04/2023, 10:00 - Ana: bye\n", encoding="utf-8")
    _, dmy, _ = run(capsys, "--home", tmp_path, "parse", ambiguous, "--date-order", "dmy")
    _, mdy, _ = run(capsys, "--home", tmp_path, "parse", ambiguous, "--date-order", "mdy")
    assert json.loads(dmy.splitlines()[0])["time"] == "2023-04-03T09:15:00"
    assert json.loads(mdy.splitlines()[0])["time"] == "2023-03-04T09:15:00"


def test_a_whole_telegram_account_imports_as_one_chat_each(tmp_path, capsys):
    code, out, _ = run(capsys, "--home", tmp_path, "import", TELEGRAM / "account" / "result.json")
    assert code == 0 and "added 9 new" in out and "added 8 new" in out
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    chats = {c["name"]: c for c in json.loads(out)}
    assert set(chats) == {"Maya Levi", "Hiking Crew", "Old Flatmates"}
    assert chats["Hiking Crew"] == {"name": "Hiking Crew", "source": "telegram", "messages": 8,
                                    "first": "2022-07-01T18:00:00", "last": "2022-07-03T12:00:00"}
    code, _, err = run(capsys, "--home", tmp_path, "import", TELEGRAM / "account" / "result.json", "--chat", "X")
    assert code == 2 and "--chat" in err


def test_chats_lists_and_removes_chats(tmp_path, capsys):
    run(capsys, "--home", tmp_path, "import", MAYA, TELEGRAM / "group" / "result.json")
    code, out, _ = run(capsys, "--home", tmp_path, "chats")
    assert code == 0 and "Maya" in out and "Hiking Crew" in out and "2023-03-15 to 2023-03-16" in out
    code, out, _ = run(capsys, "--home", tmp_path, "chats", "--remove", "Maya")
    assert code == 0 and f"{MAYA_ENTRIES} messages" in out
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert [c["name"] for c in json.loads(out)] == ["Hiking Crew"]
    code, _, err = run(capsys, "--home", tmp_path, "chats", "--remove", "Maya")
    assert code == 2 and err.startswith("error: no chat named 'Maya'")


def test_people_lists_senders_across_chats(tmp_path, capsys):
    run(capsys, "--home", tmp_path, "import", MAYA, TELEGRAM / "personal" / "result.json")
    code, out, _ = run(capsys, "--home", tmp_path, "people", "--json")
    people = {p["name"]: p for p in json.loads(out)}
    assert code == 0
    assert people["Dana"]["chats"] == ["Maya", "Maya Levi"]
    assert people["Dana"]["messages"] == 3 + 4
    code, out, _ = run(capsys, "--home", tmp_path, "people")
    assert code == 0 and out.splitlines()[0].startswith("Dana")


def test_listing_an_empty_data_folder_creates_no_store(tmp_path, capsys):
    assert run(capsys, "--home", tmp_path, "chats", "--json")[1].strip() == "[]"
    assert run(capsys, "--home", tmp_path, "people", "--json")[1].strip() == "[]"
    assert not store_path(tmp_path).exists()


BAD_FILES = {
    "missing.txt": None,
    "empty.txt": b"",
    "blank.txt": b"\xef\xbb\xbf\r\n  \n",
    "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01binary",
    "latin1.txt": "15/03/2023, 09:15 - José: olá, ça va?\n".encode("latin-1"),
    "notes.txt": b"shopping list\nmilk\neggs\n",
    "package.json": b'{"name": "left-pad", "version": "1.0.0"}',
    "messages.html": b"<!DOCTYPE html>\n<html><body>Telegram</body></html>",
    "broken.zip": b"PK\x03\x04not really a zip",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_is_not_a_chat_export_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, name):
    path = tmp_path / name
    if BAD_FILES[name] is not None:
        path.write_bytes(BAD_FILES[name])
    home = tmp_path / "home"
    for command in ("parse", "import"):
        code, out, err = run(capsys, "--home", home, command, path)
        assert code == 2
        assert out == ""
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not home.exists()  # not even the data folder was created


def test_an_error_in_one_of_several_files_names_that_file(tmp_path, capsys):
    other = tmp_path / "export.json"
    other.write_text('{"name": "x", "messages": [', encoding="utf-8")
    code, _, err = run(capsys, "--home", tmp_path, "import", MAYA, other)
    assert code == 2 and err.startswith("error: export.json: this is not valid JSON")


def test_a_zip_without_a_chat_file_is_an_error(tmp_path, capsys):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("IMG-1.jpg", b"\xff\xd8")
    code, _, err = run(capsys, "--home", tmp_path, "import", archive)
    assert code == 2 and "no chat text file" in err


def test_one_bad_file_among_several_imports_nothing(tmp_path, capsys):
    bad = tmp_path / "empty.txt"
    bad.write_bytes(b"")
    code, _, err = run(capsys, "--home", tmp_path, "import", MAYA, bad)
    assert code == 2 and "empty" in err
    assert not store_path(tmp_path).exists()
    run(capsys, "--home", tmp_path, "import", TELEGRAM / "group" / "result.json")
    code, _, _ = run(capsys, "--home", tmp_path, "import", MAYA, bad)
    _, out, _ = run(capsys, "--home", tmp_path, "chats", "--json")
    assert code == 2 and [c["name"] for c in json.loads(out)] == ["Hiking Crew"]


def readme_block(command: str) -> list[str]:
    """The output lines the README's Import section shows under `$ COMMAND`."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    after = readme.split(f"$ {command}\n", 1)[1]
    return after.split("```", 1)[0].rstrip("\n").split("\n$ ", 1)[0].splitlines()


def test_the_readme_import_and_chats_examples_are_what_the_commands_print(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile("WhatsApp Chat with Maya.zip", "w") as z:
        z.writestr(MAYA.name, MAYA.read_bytes())
    _, out, _ = run(capsys, "--home", "home", "import", "WhatsApp Chat with Maya.zip")
    assert out.splitlines() == readme_block("talkalike import 'WhatsApp Chat with Maya.zip'")
    _, out, _ = run(capsys, "--home", "home", "chats")
    assert out.splitlines() == readme_block("talkalike chats")
    _, out, _ = run(capsys, "--home", "home", "parse", MAYA)
    shown = readme_block("talkalike parse 'WhatsApp Chat with Maya.txt' | head -2")
    assert out.splitlines()[1] == shown[1]
    assert json.loads(out.splitlines()[0])["text"].startswith(json.loads(shown[0])["text"].rstrip(" …"))


def test_import_and_parse_report_every_unparsed_line_with_its_number_and_reason(tmp_path, capsys):
    chat = tmp_path / "WhatsApp Chat with Pre.txt"
    chat.write_text("some preamble\n15/03/2023, 09:15 - Maya: hi\n16/03/2023, 10:00 - Dana: yo\n", encoding="utf-8")
    code, out, err = run(capsys, "--home", tmp_path, "parse", chat)
    assert code == 0 and len(out.splitlines()) == 2
    assert err.count("unparsed") == 1 and ":1: unparsed (" in err and "'some preamble'" in err
    code, out, _ = run(capsys, "--home", tmp_path, "import", chat)
    assert code == 0 and "unparsed lines: 1" in out
    assert re.search(r"^    line 1: .+: 'some preamble'$", out, flags=re.M)


def test_import_says_which_day_month_order_it_chose_when_the_file_leaves_it_open(tmp_path, capsys):
    ambiguous = tmp_path / "WhatsApp Chat with Ana.txt"
    ambiguous.write_text("03/04/2023, 09:15 - Ana: hi\n05/04/2023, 10:00 - Ana: bye\n", encoding="utf-8")
    code, out, _ = run(capsys, "--home", tmp_path, "import", ambiguous)
    assert code == 0
    assert re.search(r"^  note: .*--date-order", out, flags=re.M)


def big_export(path: Path, n: int) -> None:
    """An Android export of `n` distinct messages, big enough that storing it takes a noticeable moment."""
    lines = [f"{1 + i // 1440 % 28:02d}/{1 + i // 40320 % 12:02d}/20{10 + i // 483840}, "
             f"{i // 60 % 24:02d}:{i % 60:02d} - {'Dana' if i % 2 else 'Maya'}: message number {i} 🙂" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_ctrl_c_or_a_crash_during_a_real_import_leaves_the_store_as_it_was(tmp_path, capsys, signal_name):
    import signal
    import sqlite3
    import subprocess
    import sys

    home = tmp_path / "home"
    assert main(["--home", str(home), "import", str(MAYA)]) == 0
    capsys.readouterr()
    big = tmp_path / "WhatsApp Chat with Big.txt"
    big_export(big, 300_000)
    # A suite started in the background by a non-interactive shell runs with SIGINT ignored, which a child inherits
    # (and Python then installs no Ctrl-C handler): give the child the default disposition, as a terminal would.
    process = subprocess.Popen([sys.executable, "-m", "talkalike", "--home", str(home), "import", str(big)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The import says on stderr when its transaction starts, after the slower reading and parsing.
    assert process.stderr.readline().startswith("storing 300,000 entries")
    process.send_signal(getattr(signal, signal_name))
    out, err = process.communicate(timeout=120)
    if signal_name == "SIGINT":
        assert process.returncode == 130 and err.startswith("error: interrupted") and "Traceback" not in err
    connection = sqlite3.connect(store_path(home))
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert connection.execute("SELECT count(*) FROM messages").fetchone() == (MAYA_ENTRIES,)
    assert connection.execute("SELECT name FROM chats").fetchall() == [("Maya",)]
    connection.close()
