"""The command line's foundation: a fast start without torch, an example ending every help, the data-folder rule."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from talkalike import cli
from talkalike.cli import main
from talkalike.home import resolve_home, store_path

ROOT = Path(__file__).resolve().parents[1]
MAYA = Path(__file__).parent / "fixtures" / "import" / "WhatsApp Chat with Maya.txt"
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "sklearn", "matplotlib", "fastapi")


# Runs the CLI in a fresh interpreter and writes every module loaded by the end (sys.modules, which also sees modules
# loaded through importlib, as the CLI's handlers are) to the file named by the first argument.
DRIVER = """
import json, sys
from talkalike.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
sys.exit(code)
"""


def imported_modules(*argv: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `talkalike ARGV` in a fresh Python and return what it printed and every module it had loaded."""
    record = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", DRIVER, str(record), *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    return result, set(json.loads(record.read_text()))


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY}


def test_the_module_record_sees_heavy_imports_so_the_checks_below_can_fail(tmp_path):
    # A module the driver itself imports must show up in the record, or an empty record would pass every check.
    subprocess.run([sys.executable, "-c", "import sqlite3\n" + DRIVER, str(tmp_path / "m.json"), "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert {"sqlite3", "talkalike.cli", "argparse"} <= set(json.loads((tmp_path / "m.json").read_text()))
    assert heavy({"torch._C", "transformers"}) == {"torch._C", "transformers"}


def test_help_imports_no_torch_or_transformers(tmp_path):
    result, modules = imported_modules("--help", tmp_path=tmp_path)
    assert "usage: talkalike" in result.stdout
    assert heavy(modules) == set()


def test_parse_and_import_import_no_torch_or_transformers(tmp_path):
    result, modules = imported_modules("--home", str(tmp_path), "parse", str(MAYA), tmp_path=tmp_path)
    assert result.returncode == 0 and result.stdout.count("\n") >= 5
    assert "talkalike.sources.whatsapp" in modules
    assert heavy(modules) == set()
    result, modules = imported_modules("--home", str(tmp_path), "import", str(MAYA), tmp_path=tmp_path)
    assert result.returncode == 0 and "added" in result.stdout
    assert "talkalike.store" in modules
    assert heavy(modules) == set()


def test_help_returns_quickly():
    # A sanity guard against a heavy import sneaking in; a loaded 2-core machine still starts Python in ~0.1 s.
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "talkalike", "--help"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    assert time.perf_counter() - began < 2.0


@pytest.mark.parametrize("command", [None, *cli.HANDLERS])
def test_every_help_ends_with_an_example(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    assert lines[-2] == "example:"
    example = lines[-1].strip()
    assert example.startswith("talkalike " if command is None else f"talkalike {command}")


def test_home_flag_beats_the_environment_which_beats_xdg(tmp_path, monkeypatch):
    flag, env, xdg = tmp_path / "flag", tmp_path / "env", tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    monkeypatch.delenv("TALKALIKE_HOME", raising=False)
    assert resolve_home() == xdg / "talkalike"
    monkeypatch.setenv("TALKALIKE_HOME", str(env))
    assert resolve_home() == env
    assert resolve_home(flag) == flag


def test_without_xdg_data_home_the_data_folder_is_under_local_share(tmp_path, monkeypatch):
    monkeypatch.delenv("TALKALIKE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home() == tmp_path / ".local" / "share" / "talkalike"


def test_import_puts_the_store_in_the_folder_the_rule_picks(tmp_path, monkeypatch, capsys):
    flag, env, xdg = tmp_path / "flag", tmp_path / "env", tmp_path / "xdg"
    monkeypatch.delenv("TALKALIKE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    assert main(["import", str(MAYA)]) == 0
    assert store_path(xdg / "talkalike").exists()
    monkeypatch.setenv("TALKALIKE_HOME", str(env))
    assert main(["import", str(MAYA)]) == 0
    assert store_path(env).exists()
    assert main(["--home", str(flag), "import", str(MAYA)]) == 0
    assert store_path(flag).exists()
    capsys.readouterr()
