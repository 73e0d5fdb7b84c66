"""`talkalike dataset` refuses an --out or option it cannot use before the build, with one `error:` line, and cleans
up what an interrupted build left behind."""

import os
import subprocess
from pathlib import Path

import pytest
from cli_checks import one_error, run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MAYA = FIXTURES / "import" / "WhatsApp Chat with Maya.txt"




@pytest.fixture
def home(tmp_path, capsys):
    assert run(capsys, "--home", tmp_path / "home", "import", MAYA)[0] == 0
    return tmp_path / "home"


def test_out_at_an_existing_file_or_dev_null_is_refused(home, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out in (a_file, Path("/dev/null")):
        one_error(*run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", out)[::2], "not a folder")
    assert a_file.read_text() == "keep me"


def test_out_under_a_file_is_refused(home, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    one_error(*run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", a_file / "ds")[::2], "is a file")


def test_out_in_a_folder_without_write_permission_is_refused(home, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    root = os.geteuid() == 0  # root ignores permission bits but not the immutable flag
    subprocess.run(["chattr", "+i", str(locked)], check=True) if root else locked.chmod(0o555)
    try:
        code, _, err = run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", locked / "ds")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True) if root else locked.chmod(0o755)
    one_error(code, err, str(locked))
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "1e300"])
def test_a_gap_that_is_not_a_finite_positive_number_is_refused(home, tmp_path, capsys, value):
    code, _, err = run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", tmp_path / "ds",
                         f"--gap-minutes={value}")
    one_error(code, err, "--gap-minutes")
    assert not (tmp_path / "ds").exists()


def test_stale_temporary_folders_of_dead_builds_are_removed_and_live_ones_kept(home, tmp_path, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".ds.tmp-{dead.pid}"
    old = tmp_path / f".ds.old-{dead.pid}"
    live = tmp_path / ".ds.tmp-1"  # pid 1 is always alive
    for folder in (stale, old, live):
        folder.mkdir()
        (folder / "train.jsonl").write_text("{}\n")
    other = tmp_path / f".other.tmp-{dead.pid}"  # another dataset's: not ours to judge
    other.mkdir()
    code, _, err = run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", tmp_path / "ds")
    assert code == 0, err
    assert not stale.exists() and not old.exists()
    assert live.exists() and other.exists()


def test_a_build_that_fails_late_leaves_the_store_as_it_was(home, tmp_path, capsys):
    # found by tests/sources/test_fuzz_cli.py: a gap this small leaves no conversation, after the privacy pass has
    # already saved its pseudonyms to the store
    import hashlib
    import sqlite3

    def dump() -> str:
        connection = sqlite3.connect(home / "talkalike.db")
        try:
            return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
        finally:
            connection.close()

    before = dump()
    code, _, err = run(capsys, "--home", home, "dataset", "--me", "Dana", "--out", tmp_path / "ds",
                       "--gap-minutes=2.3e-97")
    one_error(code, err)
    assert dump() == before and not (tmp_path / "ds").exists()
