"""What the sample-chat generators (make_sample_chat.py, make_group_chat.py) truly share: a running clock that writes
export lines in one header format, slot filling with a fresh laugh or emoji each time, and the facts file.

Not a script; the generators import it from this folder.
"""

import json
import random
from datetime import datetime, timedelta
from pathlib import Path


class Writer:
    """Builds an export line by line with a running clock; `header` is a strftime format for the line's start."""

    def __init__(self, rng: random.Random, start: datetime, header: str):
        self.rng = rng
        self.lines: list[str] = []
        self.clock = start
        self.header = header

    def say(self, sender: str, text: str) -> None:
        self.lines.append(f"{self.clock.strftime(self.header)}{sender}: {text}")

    def system(self, text: str) -> None:
        self.lines.append(f"{self.clock.strftime(self.header)}{text}")

    def wait(self, lo: int, hi: int) -> None:
        """Let lo..hi minutes pass (and, for exports with seconds, a few seconds, so no two stamps look alike)."""
        self.clock += timedelta(minutes=self.rng.randint(lo, hi), seconds=self.rng.randint(0, 59))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def fill(template: str, rng: random.Random, slots: dict[str, str], laughs: list[str], emoji: list[str]) -> str:
    """Fill a template: {lol} and {e} get a fresh laugh or emoji each time, other {slots} this conversation's value."""
    text = template
    for key, value in slots.items():  # first, so that a slot's value may hold {lol} or {e} itself
        text = text.replace("{" + key + "}", value)
    while "{lol}" in text:
        text = text.replace("{lol}", rng.choice(laughs), 1)
    while "{e}" in text:
        text = text.replace("{e}", rng.choice(emoji) * rng.choice((1, 1, 1, 2)), 1)
    assert "{" not in text, text  # a slot no conversation fills is a typo in the templates
    return text


def write_facts(facts: list[dict], path: Path) -> None:
    """The facts file: one {"question", "answers", "topic"} per line, for the eval's facts probe."""
    lines = [json.dumps({"question": f["question"], "answers": f["answers"], "topic": f["topic"]}, ensure_ascii=False)
             for f in facts]
    write_text(path, "\n".join(lines) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 bytes under a temporary name and rename, so a file is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode("utf-8"))
    tmp.replace(path)


def day_start(clock: datetime, hour: int, minute: int = 0) -> datetime:
    """The clock moved on to at least hour:minute of its own day."""
    return max(clock, clock.replace(hour=hour, minute=minute, second=0))


def facts_path(chat: Path) -> Path:
    """`X.txt` -> `X.facts.jsonl`, beside the chat."""
    return chat.with_name(chat.stem + ".facts.jsonl")


def main(description: str, generate, facts: list[dict], out: Path, seed: int) -> None:
    """A generator script's command line: write the chat and its facts file (default: next to the script)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--seed", type=int, default=seed)
    args = ap.parse_args()
    text = generate(args.seed)
    write_text(args.out, text)
    write_facts(facts, facts_path(args.out))
    print(f"wrote {args.out} ({text.count(chr(10))} lines) and {facts_path(args.out).name} ({len(facts)} facts)")
