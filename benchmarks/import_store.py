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


class Clock:
    """Wall and CPU seconds since creation; CPU time stays meaningful when other jobs share the 2 cores."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def android_export(messages: list[Message]) -> str:
    """The messages as an Android export (`15/03/2023, 09:15 - Dana: text`), 24h, day first."""
    lines = []
    for m in messages:
        author = f"{m.sender}: " if m.sender else ""
        lines.append(f"{m.time:%d/%m/%Y, %H:%M} - {author}{m.text}")
    return "\n".join(lines) + "\n"


def pandas_to_sql(messages: list[Message], path: Path) -> tuple[float, float]:
    """The peer route: what a whatstk or chat-miner user does with the DataFrame those parsers return. Appends only:
    no identity, so importing a re-export duplicates everything."""
    import sqlite3

    import pandas

    clock = Clock()
    frame = pandas.DataFrame({"time": [m.time for m in messages], "sender": [m.sender for m in messages],
                              "text": [m.text for m in messages], "kind": [m.kind for m in messages]})
    with sqlite3.connect(path) as connection:
        frame.to_sql("messages", connection, if_exists="append", index=False)
    return clock.lap()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    load = os.getloadavg()
    messages = generate(args.messages)
    parsed = ParsedExport("Bench", "whatsapp", "generated", messages)
    rows = []
    with tempfile.TemporaryDirectory() as home:
        with Store.open(Path(home)) as store:
            clock = Clock()
            counts = store.import_export(parsed)
            rows.append(("store.import_export, new store", *clock.lap(), len(messages), counts.added))
            assert counts.added == len(messages), counts
            clock = Clock()
            again = store.import_export(parsed)
            rows.append(("re-import, all skipped", *clock.lap(), len(messages), again.added))
            assert again.added == 0, again
            clock = Clock()
            read = sum(1 for _ in store.messages())
            rows.append(("read back with store.messages()", *clock.lap(), read, read))
            assert read == len(messages)
        size = sum(f.stat().st_size for f in Path(home).iterdir())
        # The whole `talkalike import FILE` path into a fresh store: read, decode, parse, insert, commit.
        path = Path(home) / "WhatsApp Chat with Bench.txt"
        path.write_text(android_export([m for m in messages if not m.edited]), encoding="utf-8")
        fresh = Path(home) / "fresh"
        fresh.mkdir()
        clock = Clock()
        exports = read_exports(path)
        parsed_at = clock.lap()
        with Store.open(fresh) as store:
            (counts,) = store.import_exports([(exports[0], None)])
        done = clock.lap()
        expected = sum(1 for m in messages if not m.edited)
        assert len(exports[0].messages) == expected, (len(exports[0].messages), expected)
        rows.append(("talkalike import FILE, end to end", *done, expected, counts.added))
        rows.append(("  of which read + parse (Android .txt)", *parsed_at, expected, len(exports[0].messages)))
        rows.append(("  of which store", done[0] - parsed_at[0], done[1] - parsed_at[1], expected, counts.added))
        rows.append(("peer: DataFrame + pandas.to_sql, append-only", *pandas_to_sql(messages, Path(home) / "pandas.db"),
                     len(messages), len(messages)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.messages:,} messages; store on disk {size / 2**20:.0f} MiB; peak RSS {peak:.0f} MiB")
    print(f"load average before: {load[0]:.1f} (2 cores)")
    print("| step | wall s | CPU s | messages/s (wall) | rows added or read |\n|---|---:|---:|---:|---:|")
    for step, wall, cpu, processed, result in rows:
        print(f"| {step} | {wall:.1f} | {cpu:.1f} | {processed / wall:,.0f} | {result:,} |")
    end_to_end = next(wall for step, wall, _, _, _ in rows if step.startswith("talkalike import"))
    print(f"target: `talkalike import` of {args.messages:,} messages under 30 s -> "
          f"{'met' if end_to_end < 30 else 'NOT met'} ({end_to_end:.1f} s)")


if __name__ == "__main__":
    main()
