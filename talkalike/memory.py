"""Memory: the persona's own past exchanges, indexed so the twin can recall what it really said before.

`talkalike dataset` writes memory.db beside train.jsonl: every (message, persona reply) pair of the training
conversations in an SQLite FTS5 table, ranked by BM25 (built into SQLite, no download, any language). `train`
copies it into the run folder. Before the persona answers, the k past exchanges most like the message in front of
it are put at the head of the prompt as earlier turns of the chat (`recall_turns`), in training and at reply time
alike, so the model learns to use them: `chat`, `serve`, the API and `eval` all recall through `recall_turns`.
Recall never returns an exchange from the conversation being answered or a later one (`before`), and held-out
conversations are never indexed.

    memory = Memory.build(rows, folder / "memory.db")
    turns = recall_turns(memory, history, k=3, before="2025-03-01T10:00:00")
"""

import itertools
import math
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from talkalike.template import split_bubbles

MEMORY_FILE = "memory.db"
MEMORY_KEY = "memory"  # set on recalled turns: the renderer gives them no loss, fit_prompt keeps them apart
# Set on a message of a history taken from the training rows ({"before": the row's start, "besides": its id}):
# recall at reply time then keeps to earlier conversations, as training's did (evaluate/calibrate.py)
RECALL_LIMIT = "recall_limit"
MAX_QUERY_TERMS = 24  # the most distinctive words of the message; BM25 over more adds noise and time
WORD = re.compile(r"[^\W_]{2,}")  # letters and digits of any script (Hebrew included); emoji and punctuation split


@dataclass(frozen=True)
class Exchange:
    """Something said to the persona, the persona's reply, and when (the conversation's start)."""

    context: str
    reply: str
    at: str
    row: str


def exchanges(rows: Iterable[dict]) -> Iterator[Exchange]:
    """Every (user turn, persona turn) pair of dataset rows; conversations the persona opened have no message."""
    for row in rows:
        messages = [m for m in row["messages"] if not m.get(MEMORY_KEY)]
        for before, message in itertools.pairwise(messages):
            if message["role"] == "assistant" and before["role"] == "user" and before["content"].strip():
                yield Exchange(before["content"], message["content"], row.get("start", ""), row.get("id", ""))


class Memory:
    """A read-only index of past exchanges (memory.db)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # Read-only and shared across threads: the server recalls from its worker threads, one query at a time.
        self.connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                          check_same_thread=False)

    @classmethod
    def build(cls, rows: Iterable[dict], path: Path) -> "Memory":
        """Index the exchanges of `rows` into a new memory.db at `path` (replacing one that is there)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        with sqlite3.connect(tmp) as db:
            # unicode61 splits on anything that is not a letter or digit in any script; diacritics (and Hebrew
            # niqqud) are folded so "café" finds "cafe".
            db.execute("CREATE VIRTUAL TABLE exchanges USING fts5(context, reply, at UNINDEXED, row UNINDEXED, "
                       "tokenize = 'unicode61 remove_diacritics 2')")
            db.executemany("INSERT INTO exchanges VALUES (?, ?, ?, ?)",
                           ((e.context, e.reply, e.at, e.row) for e in exchanges(rows)))
        db.close()
        tmp.replace(path)
        return cls(path)

    @classmethod
    def open(cls, folder: Path | None) -> "Memory | None":
        """The memory.db in `folder`, or None when there is none (a run trained before memory existed)."""
        if folder is None or not (Path(folder) / MEMORY_FILE).is_file():
            return None
        return cls(Path(folder) / MEMORY_FILE)

    def __len__(self) -> int:
        return self.connection.execute("SELECT count(*) FROM exchanges").fetchone()[0]

    def replies(self) -> list[str]:
        """Every persona reply indexed (what the persona has written)."""
        return [reply for (reply,) in self.connection.execute("SELECT reply FROM exchanges")]

    def line_break_share(self) -> float:
        """The share of the persona's messages written over several lines (0 when nothing is indexed)."""
        messages = [message for reply in self.replies() for message in split_bubbles(reply)]
        return sum("\n" in message for message in messages) / len(messages) if messages else 0.0

    def messages_per_turn(self, share: float = 0.9) -> int:
        """The number of messages that `share` of the persona's replies stay within (nearest rank); 0 if none."""
        counts = sorted(len(split_bubbles(reply)) for (reply,) in self.connection.execute("SELECT reply FROM exchanges"))
        return counts[max(0, math.ceil(share * len(counts)) - 1)] if counts else 0

    def recall(self, query: str, k: int = 3, before: str | None = None, besides: str | None = None) -> list[Exchange]:
        """The `k` past exchanges most like `query` (best first), only from conversations that started before
        `before` (an ISO timestamp) when it is given, and never from the row `besides`."""
        terms = list(dict.fromkeys(w.lower() for w in WORD.findall(query)))[:MAX_QUERY_TERMS]
        if not terms or k <= 0:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        # bm25() is smaller for better matches; a match in what was said to the persona weighs twice one in its reply
        rows = self.connection.execute(
            "SELECT context, reply, at, row FROM exchanges WHERE exchanges MATCH ? AND (? IS NULL OR at < ?) "
            "AND row IS NOT ? ORDER BY bm25(exchanges, 2.0, 1.0) LIMIT ?", (match, before, before, besides, k)).fetchall()
        return [Exchange(*row) for row in rows]


def query_of(history: list[dict]) -> str:
    """What recall looks for: the other person's latest turn (the message the persona is about to answer)."""
    for message in reversed(history):
        if message["role"] == "user" and not message.get(MEMORY_KEY):
            return message["content"]
    return ""


def with_recalled(row: dict, memory: "Memory | None", k: int) -> list[dict]:
    """A training row's messages with the `k` exchanges recalled for it after its system line: the query is every
    message said to the persona in the row, and only conversations that started before the row's are searched (never
    the row itself, even when it has no start time)."""
    messages = row["messages"]
    if memory is None or k <= 0:
        return messages
    head = 1 if messages and messages[0]["role"] == "system" else 0
    query = " ".join(m["content"] for m in messages if m["role"] == "user")
    found = memory.recall(query, k, before=row.get("start") or None, besides=row.get("id") or None)
    return messages[:head] + as_turns(found) + messages[head:]


def recall_turns(memory: "Memory | None", history: list[dict], k: int, before: str | None = None,
                 besides: str | None = None) -> list[dict]:
    """Recalled exchanges as earlier turns (user, persona, ...), oldest first, marked with MEMORY_KEY; [] without
    a memory or with k = 0. `before` and `besides` as in Memory.recall."""
    if memory is None or k <= 0:
        return []
    return as_turns(memory.recall(query_of(history), k, before, besides))


def recall_limit(history: list[dict]) -> dict:
    """The RECALL_LIMIT a history's messages carry ({"before": ..., "besides": ...}), or {} (recall from anything)."""
    return next((m[RECALL_LIMIT] for m in history if m.get(RECALL_LIMIT)), {})


def as_turns(found: list[Exchange]) -> list[dict]:
    """Recalled exchanges as earlier turns of the chat (user, persona, ...), oldest first, marked as memory."""
    turns = []
    for exchange in sorted(found, key=lambda e: e.at):
        turns += [{"role": "user", "content": exchange.context, MEMORY_KEY: True},
                  {"role": "assistant", "content": exchange.reply, MEMORY_KEY: True}]
    return turns
