"""Store benchmark: import 1,000,000 messages into the SQLite store, re-import them, and read them back.

The target (issue 2) is an import of 1M messages in under 30 s on the 2-core development machine. The messages are
generated in memory (the parser's own speed is measured by the parse benchmark), with multi-line bodies, emoji, Hebrew,
media and system entries, and identical messages repeated within a minute, as real chats have.
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
            rows.append(("import (new store)", time.perf_counter() - began, counts.added))
            assert counts.added == len(messages), counts
            began = time.perf_counter()
            again = store.import_export(parsed)
            rows.append(("re-import (all skipped)", time.perf_counter() - began, again.added))
            assert again.added == 0, again
            began = time.perf_counter()
            read = sum(1 for _ in store.messages())
            rows.append(("read back with messages()", time.perf_counter() - began, read))
            assert read == len(messages)
        size = sum(f.stat().st_size for f in Path(home).iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.messages:,} messages; store on disk {size / 2**20:.0f} MiB; peak RSS {peak:.0f} MiB")
    print(f"| step | seconds | messages/s | rows |\n|---|---:|---:|---:|")
    for step, seconds, n in rows:
        print(f"| {step} | {seconds:.1f} | {args.messages / seconds:,.0f} | {n:,} |")
    print(f"target: import under 30 s -> {'met' if rows[0][1] < 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
