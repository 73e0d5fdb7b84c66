"""Benchmark: the clean stage and the privacy pass on 1,000,000 messages (their share of the 60 s dataset budget).

    .venv/bin/python benchmarks/privacy_pass.py                    # 1,000,000 messages
    .venv/bin/python benchmarks/privacy_pass.py --messages 200000

The corpus is the shipped sample chat repeated (with its links, media and planted personal data), and a harder mix where
2 % of the messages carry a phone number, e-mail, card or IBAN. Side by side in one run: `clean`, `pseudonymise` as
shipped (cheap prefilters: digit count, '@', '://'), and the naive way for comparison, `phonenumbers.PhoneNumberMatcher`
on every message (timed on a slice and scaled up, because it is slow).
"""

import argparse
import random
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import phonenumbers  # noqa: E402

from talkalike.message import Message  # noqa: E402
from talkalike.prepare.clean import clean  # noqa: E402
from talkalike.prepare.privacy import pseudonymise  # noqa: E402
from talkalike.sources import read_export  # noqa: E402

PII = ["call me at +972 50-123-4567", "my number is 054-765-4321", "ring +1 415 555 0132 tomorrow",
       "write to dana.levi@example.com", "+44 20 7946 0958 is the office", "the card is 4111 1111 1111 1111 lol",
       "IBAN IL62 0108 0000 0009 9999 999", "my id is 123456782"]


def corpus(total: int, pii_share: float, seed: int = 0) -> list[Message]:
    """`total` messages: the sample repeated, with `pii_share` of them replaced by a line carrying personal data."""
    base = read_export(ROOT / "examples" / "WhatsApp Chat with Noa.txt").messages  # as `talkalike import` reads it
    rng = random.Random(seed)
    out = []
    while len(out) < total:
        for m in base:
            if m.kind == "text" and rng.random() < pii_share:
                m = replace(m, text=rng.choice(PII))
            out.append(m)
    return out[:total]


def match_all(messages: list) -> list:
    """What a naive pass does: run the phone-number matcher over every message."""
    return [list(phonenumbers.PhoneNumberMatcher(m.text, "IL")) for m in messages]


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = []
    for label, share in (("sample chat repeated", 0.0), ("2 % personal data", 0.02)):
        messages = corpus(args.messages, share)
        (kept, dropped), t_clean = timed(partial(clean, messages))
        (out, counts), t_pii = timed(partial(pseudonymise, kept, None))
        naive_slice = kept[: max(1, len(kept) // 20)]
        _, t_naive = timed(partial(match_all, naive_slice))
        t_naive *= len(kept) / len(naive_slice)
        rows.append((label, len(messages), len(kept), t_clean, t_pii, t_naive, dict(counts)))
    print(f"{'corpus':<22} {'messages':>9} {'kept':>9} {'clean s':>8} {'privacy s':>10} {'naive phone-matcher s':>22}")
    for label, n, k, tc, tp, tn, counts in rows:
        print(f"{label:<22} {n:>9} {k:>9} {tc:>8.1f} {tp:>10.1f} {tn:>22.1f}   {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
