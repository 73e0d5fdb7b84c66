"""Small file helpers every stage shares: JSONL in and out, atomic writes, and progress lines on stderr."""

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path


def say(text: str) -> None:
    """A progress or diagnostic line: stderr, so stdout carries only results."""
    print(text, file=sys.stderr, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_atomic(path: Path, text: str, private: bool = False) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so a reader (or a crash)
    sees the old file or the new one, never half of one. `private` files are 0600 from their first byte."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a stale one keeps its old mode
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666), "w",
                       encoding="utf-8") as out:
            out.write(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    """`data` as indented UTF-8 JSON, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: Iterable[dict], private: bool = False) -> Path:
    """One JSON record a line, written atomically."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), private)


def private_folder(path: Path) -> Path:
    """`path` as a folder only its owner can enter (0700), created if missing, tightened if it exists."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def make_private(folder: Path) -> Path:
    """Everything under `folder` readable by its owner alone: folders 0700, files 0600."""
    folder = Path(folder)
    for inside in [folder, *folder.rglob("*")]:
        if not inside.is_symlink():
            inside.chmod(0o700 if inside.is_dir() else 0o600)
    return folder
