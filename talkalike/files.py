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


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data: dict) -> Path:
    """`data` as indented UTF-8 JSON, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """One JSON record a line, written atomically."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
