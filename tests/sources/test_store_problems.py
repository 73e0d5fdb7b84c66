"""What goes wrong around the store, told apart: a folder in its place, a data folder that cannot be one, a read-only
folder (which the reading commands still use), a busy store, a damaged one, a full disk, and Ctrl-C after the commit."""

import functools
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_checks import one_error, run

from talkalike import store as store_module
from talkalike.errors import TalkalikeError
from talkalike.home import store_path
from talkalike.sources import read_export
from talkalike.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAYA = FIXTURES / "import" / "WhatsApp Chat with Maya.txt"




def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def read_only(folder: Path):
    """`folder` as a read-only folder, for root too: root ignores permission bits but not the immutable flag."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_a_store_file_that_is_a_folder_is_one_clear_error(tmp_path, capsys):
    store_path(tmp_path).mkdir()
    one_error(*run(capsys, "--home", tmp_path, "import", MAYA)[::2], "is a folder")
    one_error(*run(capsys, "--home", tmp_path, "chats")[::2], "is a folder")


def test_a_data_folder_that_is_a_file_or_cannot_be_made_is_one_clear_error(tmp_path, capsys):
    a_file = tmp_path / "home"
    a_file.write_text("not a folder")
    one_error(*run(capsys, "--home", a_file, "import", MAYA)[::2], "is a file", "--home")
    one_error(*run(capsys, "--home", a_file / "below", "chats")[::2], "cannot create the data folder", "--home")


def test_the_reading_commands_work_on_a_store_in_a_read_only_folder_and_import_says_read_only(tmp_path, capsys):
    home = tmp_path / "home"
    assert run(capsys, "--home", home, "import", MAYA)[0] == 0
    before = digest(store_path(home))
    with read_only(home):
        code, out, _ = run(capsys, "--home", home, "chats", "--json")
        assert code == 0 and json.loads(out)[0]["messages"] == 9
        code, out, _ = run(capsys, "--home", home, "people", "--json")
        assert code == 0 and {p["name"] for p in json.loads(out)} == {"Maya", "Dana"}
        code, out, err = run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", tmp_path / "ds")
        assert code == 0, err
        one_error(*run(capsys, "--home", home, "import", MAYA)[::2], "read-only", "chats")
        assert sorted(p.name for p in home.iterdir()) == ["talkalike.db"]
    assert digest(store_path(home)) == before
    assert (tmp_path / "ds" / "train.jsonl").is_file()


def test_a_busy_store_says_so_waits_and_then_imports(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_WAIT_S", 20.0)
    run(capsys, "--home", tmp_path, "chats")
    Store.open(tmp_path).close()
    holder = sqlite3.connect(store_path(tmp_path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another import, mid-transaction
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        code, out, err = run(capsys, "--home", tmp_path, "import", MAYA)
    finally:
        release.join()
        holder.close()
    assert code == 0 and "added 9 new" in out
    assert "the store is busy: another talkalike command is writing to it; waiting" in err


def test_a_store_that_stays_busy_is_one_error_saying_busy(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_WAIT_S", 1.0)
    Store.open(tmp_path).close()
    holder = sqlite3.connect(store_path(tmp_path), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        code, _, err = run(capsys, "--home", tmp_path, "import", MAYA)
    finally:
        holder.close()
    assert "waiting up to 1 s" in err
    one_error(code, err, "still busy", "another talkalike command")


def test_a_damaged_store_is_found_before_anything_is_written_to_it(tmp_path, capsys):
    run(capsys, "--home", tmp_path, "import", MAYA)
    with Store.open(tmp_path) as store:  # enough rows for several pages, then a checkpoint into the main file
        store.connection.executemany("INSERT INTO messages (chat_id, time, sender, text, kind, edited, seq, dup) "
                                     "VALUES (1, ?, 'Maya', ?, 'text', 0, 0, 0)",
                                     [(f"2023-04-01T00:{i % 60:02}:00", f"filler {i} " * 20) for i in range(400)])
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = store_path(tmp_path)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[4 * page:5 * page] = os.urandom(page)  # a page in the middle of the messages table
    path.write_bytes(bytes(data))
    before = digest(path)
    one_error(*run(capsys, "--home", tmp_path, "import", MAYA)[::2], "damaged")
    assert digest(path) == before


def test_a_file_that_is_not_sqlite_is_told_apart_from_a_read_only_or_busy_store(tmp_path, capsys):
    store_path(tmp_path).write_bytes(b"not sqlite at all" * 300)
    message = one_error(*run(capsys, "--home", tmp_path, "chats")[::2], "not a readable talkalike store")
    assert "busy" not in message and "read-only" not in message


def test_a_full_disk_during_import_is_one_error_and_stores_nothing(tmp_path):
    parsed = read_export(MAYA)
    big = read_export(MAYA)
    big.messages = [m.__class__(m.time, m.sender, m.text + " " + "x" * 3000 + str(i), m.kind)
                    for i, m in enumerate(parsed.messages * 200)]
    with Store.open(tmp_path) as store:
        store.import_export(parsed)
        pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
        store.connection.execute(f"PRAGMA max_page_count = {pages + 20}")  # the disk fills 80 KB later
        with pytest.raises(TalkalikeError, match="disk space"):
            store.import_export(big, chat="Big")
        assert [(c.name, c.messages) for c in store.chats()] == [("Maya", 9)]


def test_ctrl_c_after_the_commit_says_the_import_was_stored(tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "import_report", interrupted)
    code, _, err = run(capsys, "--home", tmp_path, "import", MAYA)
    assert code == 130 and "after the import was stored" in err and "nothing was half-written" not in err
    with Store.open(tmp_path, readonly=True) as store:
        assert store.chats()[0].messages == 9


def test_ctrl_c_as_the_commit_returns_says_the_import_was_stored(tmp_path, capsys, monkeypatch):
    real = sqlite3.Connection

    class CommitThenCtrlC(real):
        def execute(self, sql, *args):
            result = super().execute(sql, *args)
            if sql == "COMMIT" and self.total_changes >= 9:
                raise KeyboardInterrupt
            return result

    monkeypatch.setattr(store_module.sqlite3, "connect", functools.partial(sqlite3.connect, factory=CommitThenCtrlC))
    code, _, err = run(capsys, "--home", tmp_path, "import", MAYA)
    monkeypatch.undo()
    assert code == 130 and "just after the import was stored" in err
    with Store.open(tmp_path, readonly=True) as store:
        assert store.chats()[0].messages == 9


def test_ctrl_c_before_the_commit_says_nothing_was_stored(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_update_edited", interrupted)
    code, _, err = run(capsys, "--home", tmp_path, "import", MAYA)
    assert code == 130 and "before the import was stored; the store is as it was" in err
    with Store.open(tmp_path, readonly=True) as store:
        assert store.chats() == []


def test_a_schema_1_store_gains_the_date_order_column_and_keeps_its_chats(tmp_path):
    with Store.open(tmp_path) as store:
        store.import_export(read_export(MAYA))
        store.connection.execute("ALTER TABLE chats DROP COLUMN date_order")
        store.connection.execute("PRAGMA user_version = 1")
    shutil.copy(store_path(tmp_path), tmp_path / "v1.db")
    with Store.open(tmp_path) as store:
        assert store.chats()[0].messages == 9 and store.date_orders() == {}
        store.import_export(read_export(MAYA))
        assert store.date_orders() == {"Maya": "dmy"}
