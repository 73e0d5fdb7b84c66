"""Benchmark: recall and precision of the privacy pass on the PII corpus, and what it changes in the bundled samples.

    .venv/bin/python benchmarks/pii_recall.py              # figures
    .venv/bin/python benchmarks/pii_recall.py --show       # also every miss, every false positive, every sample change

Recall: planted items (tests/prepare/pii_corpus.py) of which nothing survives (the value as written, and for values
with digits their last 7 digits in any spelling). Precision: replacements that hit planted data, out of all
replacements made on the planted items and on ordinary text with numbers (dates, times, prices, counts, versions,
scores, flights, addresses). The false-positive rate is the share of ordinary texts that changed at all. The samples
(examples/*.txt) are pseudonymised chat by chat as `talkalike dataset` does, and every replaced value is listed.
"""

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talkalike.message import Message  # noqa: E402
from talkalike.prepare.clean import clean  # noqa: E402
from talkalike.prepare.privacy import pseudonymise  # noqa: E402
from talkalike.sources import read_export  # noqa: E402
from tests.prepare.pii_corpus import ordinary, planted, survives  # noqa: E402


def run_corpus(show: bool) -> dict:
    """Recall, precision and the false-positive rate on the corpus."""
    from datetime import datetime, timedelta

    t0 = datetime(2025, 3, 1)
    items, texts = planted(), ordinary()
    missed, hits = [], 0
    for item in items:
        messages = [Message(t0 + timedelta(seconds=i), "Dana", b) for i, b in enumerate(item.bubbles)]
        result = pseudonymise(messages)
        out = [m.text for m in result.messages]
        if survives(item.secret, out):
            missed.append((item, out))
        hits += sum(result.counts.values())
    false, changed = 0, []
    for text in texts:
        result = pseudonymise([Message(t0, "Dana", text)])
        if result.messages[0].text != text:
            changed.append((text, result.messages[0].text))
            false += sum(result.counts.values())
    if show:
        for item, out in missed:
            print(f"MISSED {item.country} {item.form}: {item.bubbles} -> {out}")
        for text, out in changed:
            print(f"CHANGED {text!r} -> {out!r}")
    countries = {item.country for item in items}
    return {"planted": len(items), "countries": len(countries), "forms": len({item.form for item in items}),
            "recall": (len(items) - len(missed)) / len(items), "ordinary": len(texts),
            "precision": hits / (hits + false), "false_positive_rate": len(changed) / len(texts)}


def run_samples(show: bool) -> list[dict]:
    """Every replaced value in the bundled sample chats."""
    rows = []
    for path in sorted((ROOT / "examples").glob("WhatsApp Chat with *.txt")):
        export = read_export(path)
        messages = clean(export.messages).messages
        start = time.process_time()
        result = pseudonymise(messages)
        seconds = time.process_time() - start
        changes = [(a.text, b.text) for a, b in zip(messages, result.messages, strict=False) if a.text != b.text]
        numbers = sum(1 for m in messages if re.search(r"\d", m.text))
        if show:
            for before, after in changes:
                print(f"{path.name}: {before!r} -> {after!r}")
        rows.append({"sample": path.name, "messages": len(messages), "with digits": numbers,
                     "changed": len(changes), "replaced": dict(result.counts), "cpu_s": round(seconds, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--show", action="store_true", help="print misses, false positives and sample changes")
    args = parser.parse_args()
    corpus = run_corpus(args.show)
    print(f"planted items: {corpus['planted']} in {corpus['countries']} countries, {corpus['forms']} forms")
    print(f"recall: {corpus['recall']:.1%}")
    print(f"precision: {corpus['precision']:.1%} (ordinary texts: {corpus['ordinary']}, "
          f"changed: {corpus['false_positive_rate']:.1%})")
    for row in run_samples(args.show):
        print(f"{row['sample']}: {row['messages']} messages ({row['with digits']} with digits), {row['changed']} changed,"
              f" replaced {row['replaced']}, {row['cpu_s']} CPU s")


if __name__ == "__main__":
    main()
