"""What the sample-chat generators (make_sample_chat.py, make_group_chat.py) truly share: a running clock that writes
export lines in one header format, slot filling with a fresh laugh or emoji each time, and the facts file.

Not a script; the generators import it from this folder.
"""

import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

from talkalike.files import write_atomic, write_jsonl


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
    write_jsonl(path, [{key: f[key] for key in ("question", "answers", "topic")} for f in facts])


def day_start(clock: datetime, hour: int, minute: int = 0) -> datetime:
    """The clock moved on to at least hour:minute of its own day."""
    return max(clock, clock.replace(hour=hour, minute=minute, second=0))


def conversations(w: Writer, rng: random.Random, start: date, end: date, plans: list[tuple], per_day: tuple,
                  opens: tuple[int, int], gap: tuple[int, int], topic_weights) -> Iterator[tuple[date, tuple | None, str]]:
    """(day, plan, topic) of each conversation from `start` to `end`, moving the clock: 0-3 a day (`per_day` weighs
    them), the day's first after `opens` (hour, minute), then `gap` minutes of silence before each (so the one-hour
    splitter sees each one separately), none from 23:00; a plan that is due takes the day's next conversation."""
    plans = list(plans)
    day = start
    while day <= end:
        count = rng.choices((0, 1, 2, 3), weights=per_day)[0]
        if plans and plans[0][0] <= day:
            count = max(count, 1)
        w.clock = day_start(w.clock, *opens)
        for _ in range(count):
            w.clock += timedelta(minutes=rng.randint(*gap))
            if w.clock.date() != day or w.clock.hour >= 23:
                break
            plan = plans.pop(0) if plans and plans[0][0] <= day else None
            weights = topic_weights(day)
            yield day, plan, plan[1] if plan else rng.choices(list(weights), weights=list(weights.values()))[0]
        day += timedelta(days=1)
        w.clock = max(w.clock, datetime(day.year, day.month, day.day, 0, 0))


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
    write_atomic(args.out, text)
    write_facts(facts, facts_path(args.out))
    print(f"wrote {args.out} ({text.count(chr(10))} lines) and {facts_path(args.out).name} ({len(facts)} facts)")
