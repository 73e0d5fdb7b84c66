"""Store benchmark: import 1,000,000 messages into the SQLite store, re-import them, read them back, and time the
whole `talkalike import` path (read the file, parse, store) on the same messages written as an Android export.

The target (issue 2) is an import of 1M messages in under 30 s on the 2-core development machine. The messages are
generated in memory (the parser's speed against its peers is measured by the parse benchmark), with multi-line bodies,
emoji, Hebrew, media and system entries, and identical messages repeated within a minute, as real chats have.
Run: `nice .venv/bin/python benchmarks/import_store.py [--messages 1000000]`.
"""

import argparse
import os
import platform
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkalike.message import Message, ParsedExport  # noqa: E402
from talkalike.sources import read_exports  # noqa: E402
from talkalike.store import Store  # noqa: E402

TEXTS = [
    "ok", "haha 😂😂", "see you at 8?", "מה קורה? 🙂", "on my way\nbe there in 10", "👨‍👩‍👧 family dinner sunday",
    "did you see the game last night, unbelievable ending", "תודה רבה!!", "lol", "sure\n\nwhy not",
]


def generate(n: int, seed: int = 0) -> list[Message]:
    """`n` messages two minutes apart on average, two senders, with repeats inside one minute."""
    rng = random.Random(seed)
    start = datetime(2019, 1, 1, 8, 0)
    messages = []
    minute = 0
    for i in range(n):
        minute += rng.choice((0, 0, 1, 2, 5))
        when = start + timedelta(minutes=minute)
        roll = rng.random()
        if roll < 0.03:
            messages.append(Message(when, rng.choice(("Dana", "Maya")), "<Media omitted>", "media"))
        elif roll < 0.035:
            messages.append(Message(when, None, "Messages and calls are end-to-end encrypted.", "system"))
        else:
            text = rng.choice(TEXTS) if roll < 0.6 else f"{rng.choice(TEXTS)} #{i}"
            messages.append(Message(when, rng.choice(("Dana", "Maya")), text, "text", roll > 0.99))
    return messages


def android_export(messages: list[Message]) -> str:
    """The messages as an Android export (`15/03/2023, 09:15 - Dana: text`), 24h, day first."""
    lines = []
    for m in messages:
        author = f"{m.sender}: " if m.sender else ""
        lines.append(f"{m.time:%d/%m/%Y, %H:%M} - {author}{m.text}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    messages = generate(args.messages)
    parsed = ParsedExport("Bench", "whatsapp", "generated", messages)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        with Store.open(Path(home)) as store:
            began = time.perf_counter()
            counts = store.import_export(parsed)
            rows.append(("store.import_export, new store", time.perf_counter() - began, len(messages), counts.added))
            assert counts.added == len(messages), counts
            began = time.perf_counter()
            again = store.import_export(parsed)
            rows.append(("re-import, all skipped", time.perf_counter() - began, len(messages), again.added))
            assert again.added == 0, again
            began = time.perf_counter()
            read = sum(1 for _ in store.messages())
            rows.append(("read back with store.messages()", time.perf_counter() - began, read, read))
            assert read == len(messages)
        size = sum(f.stat().st_size for f in Path(home).iterdir())
        # The whole `talkalike import FILE` path into a fresh store: read, decode, parse, insert, commit.
        path = Path(home) / "WhatsApp Chat with Bench.txt"
        path.write_text(android_export([m for m in messages if not m.edited]), encoding="utf-8")
        fresh = Path(home) / "fresh"
        fresh.mkdir()
        began = time.perf_counter()
        exports = read_exports(path)
        parsed_at = time.perf_counter()
        with Store.open(fresh) as store:
            (counts,) = store.import_exports([(exports[0], None)])
        done = time.perf_counter()
        expected = sum(1 for m in messages if not m.edited)
        assert len(exports[0].messages) == expected, (len(exports[0].messages), expected)
        rows.append(("talkalike import FILE, end to end", done - began, expected, counts.added))
        rows.append(("  of which read + parse (Android .txt)", parsed_at - began, expected, len(exports[0].messages)))
        rows.append(("  of which store", done - parsed_at, expected, counts.added))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.messages:,} messages; store on disk {size / 2**20:.0f} MiB; peak RSS {peak:.0f} MiB")
    print("| step | seconds | messages/s | rows added or read |\n|---|---:|---:|---:|")
    for step, seconds, processed, result in rows:
        print(f"| {step} | {seconds:.1f} | {processed / seconds:,.0f} | {result:,} |")
    print(f"target: import under 30 s -> {'met' if rows[-1][1] < 30 else 'NOT met'} (end to end)")


if __name__ == "__main__":
    main()
