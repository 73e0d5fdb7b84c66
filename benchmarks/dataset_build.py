"""Benchmark: `talkalike dataset` on 1,000,000 imported messages, PII pass included (target: under 60 s on 2 cores).

    .venv/bin/python benchmarks/dataset_build.py                 # 1,000,000 messages
    .venv/bin/python benchmarks/dataset_build.py --messages 100000

Generates a synthetic corpus straight into a Store (two-person and group chats, Hebrew and English, bursts of short
messages, phone numbers from several countries, e-mails, links, media placeholders), then times, side by side in one run:
reading the store alone (the floor), the whole build without the privacy pass, and the whole build as shipped.
"""

import argparse
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkalike.message import Message, ParsedExport  # noqa: E402
from talkalike.prepare.dataset import DatasetConfig, build_dataset  # noqa: E402
from talkalike.store import Store  # noqa: E402

PERSONA = "Noa"
SHORT = ["ok", "haha", "lol", "wait", "omg 😂", "חחחח", "יאללה", "כן", "sure!!", "on my way 🏃‍♀️", "pita did it again 🙈",
         "מה קורה", "brb", "no wayyy", "tmrw?", "beach later?", "i'm dead 💀", "love u ❤️"]
LONG = ["I think we should meet at the café on Dizengoff at eight, if that suits you.",
        "The train schedule on Friday is quite limited, so make sure you catch the one before three o'clock.",
        "Please send me the document when you have a moment, and let me know if anything is unclear.",
        "אני חושב שכדאי שניפגש מחר בבוקר, לפני שכולם מגיעים למשרד."]
PII = ["call me at +972 52-345-6789", "my number is 054-765-4321", "ring +1 415 555 0132 tomorrow",
       "write to dana.levi@example.com", "see https://example.org/plan?id=42", "+44 20 7946 0958 is the office",
       "the card is 4111 1111 1111 1111 lol", "IBAN IL62 0108 0000 0009 9999 999"]


def corpus(total: int, seed: int = 0) -> list[tuple[str, list[Message]]]:
    """Chats of synthetic messages adding up to `total`: a third in group chats, the rest two-person."""
    rng = random.Random(seed)
    chats = []
    n_chats = max(2, total // 25_000)
    for c in range(n_chats):
        group = c % 3 == 0
        others = [f"Friend{c}_{k}" for k in range(4 if group else 1)]
        people = [PERSONA] + others
        t = datetime(2022, 1, 1) + timedelta(hours=c)
        messages = []
        while len(messages) < total // n_chats:
            sender = rng.choice(people)
            for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):  # bursts of short messages
                r = rng.random()
                if r < 0.02:
                    text = rng.choice(PII)
                elif r < 0.03:
                    text, kind = "<Media omitted>", "media"
                    messages.append(Message(t, sender, text, kind))
                    continue
                else:
                    text = rng.choice(SHORT if sender == PERSONA else SHORT + LONG)
                messages.append(Message(t, sender, text))
                t += timedelta(seconds=rng.randint(5, 120))
            # most replies come within minutes; now and then an evening or a night of silence
            t += timedelta(minutes=rng.choice((1, 2, 5, 10, 30, 90, 600)))
        chats.append((f"chat{c:03d}", messages))
    return chats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        chats = corpus(args.messages)
        store = Store(tmp / "talkalike.db")
        store.import_exports([(ParsedExport(name, "whatsapp", "synthetic", messages), name) for name, messages in chats])
        del chats
        n = sum(info.messages for info in store.chats())
        print(f"generated and imported {n} messages in {len(store.chats())} chats in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)

        rows = []
        t0, c0 = time.perf_counter(), time.process_time()
        read = sum(1 for _ in store.messages())
        rows.append(("read the store only (floor)", time.perf_counter() - t0, time.process_time() - c0, read))
        for label, privacy in (("dataset, privacy off", False), ("dataset, as shipped (privacy on)", True)):
            t0, c0 = time.perf_counter(), time.process_time()
            stats = build_dataset(store, DatasetConfig(persona=PERSONA, privacy=privacy), tmp / f"ds-{privacy}")
            rows.append((label, time.perf_counter() - t0, time.process_time() - c0, stats["messages_read"]))
            print(f"{label}: {stats['samples']} samples, pseudonymised {stats['privacy']['replaced']}", file=sys.stderr)
    # wall time is what a user waits; CPU time is steadier on a machine shared with other work
    print(f"\n{'step':<36} {'wall s':>7} {'CPU s':>7} {'messages/s (wall)':>18}")
    for label, seconds, cpu, count in rows:
        print(f"{label:<36} {seconds:>7.1f} {cpu:>7.1f} {count / seconds:>18,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
