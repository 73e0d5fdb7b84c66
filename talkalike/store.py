"""The local corpus: every imported chat in one SQLite file in the data folder, and the import-stage commands.

`talkalike import FILE...` fills it, `talkalike chats` and `talkalike people` list it, `talkalike parse FILE` shows what an
import would store without storing it. Later stages read `Store.open(home).messages()`.
Try it: `talkalike import 'WhatsApp Chat with Maya.zip' && talkalike chats`.
"""

import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.home import resolve_home, store_path
from talkalike.message import KINDS, Message, ParsedExport

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    time TEXT NOT NULL,      -- ISO 8601 local time, YYYY-MM-DDTHH:MM:SS, so text order is time order
    sender TEXT,             -- NULL for system events without an author
    text TEXT NOT NULL,
    kind TEXT NOT NULL,
    edited INTEGER NOT NULL,
    seq INTEGER NOT NULL,    -- position among the export's entries with the same time: keeps file order within a minute
    dup INTEGER NOT NULL     -- how many identical entries came before this one in its export
);
-- The identity of a message. WhatsApp exports are overlapping snapshots with no message ids, so an entry is known by
-- what it says and when, plus `dup`: two identical "ok" in one minute are two messages, and a later export that holds
-- both again matches both. The one case this cannot tell apart: a later export that starts inside the very minute
-- the earlier one ends in, cut between identical messages of that minute. ifnull() because UNIQUE treats NULLs as
-- all different.
CREATE UNIQUE INDEX IF NOT EXISTS messages_identity ON messages(chat_id, time, ifnull(sender, ''), text, kind, dup);
CREATE INDEX IF NOT EXISTS messages_order ON messages(chat_id, time, seq);
"""
INSERT = ("INSERT OR IGNORE INTO messages (chat_id, time, sender, text, kind, edited, seq, dup) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class ChatInfo:
    """One stored chat with its size and date range."""

    name: str
    source: str
    messages: int
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class Person:
    """A sender across the stored chats (system events not counted)."""

    name: str
    messages: int
    chats: tuple[str, ...]


@dataclass(frozen=True)
class ImportCounts:
    """What one import did to one chat."""

    chat: str
    added: int
    skipped: int  # already stored: the same entry from an earlier or overlapping export


def _rows(chat_id: int, messages: Iterable[Message]) -> Iterator[tuple]:
    """Each message as an INSERT row, with its position within its minute and its count among identical entries."""
    dups: dict = {}
    seqs: dict = {}
    for message in messages:
        yield _row(chat_id, message, dups, seqs)


def _row(chat_id: int, message: Message, dups: dict, seqs: dict) -> tuple:
    # Plain dicts with .get: a Counter's missing-key path runs Python code, which a million rows notice.
    time = message.time.isoformat(timespec="seconds")
    key = (time, message.sender, message.text, message.kind)
    dup = dups.get(key, 0)
    dups[key] = dup + 1
    seq = seqs.get(time, 0)
    seqs[time] = seq + 1
    return (chat_id, time, message.sender, message.text, message.kind, int(message.edited), seq, dup)


class Store:
    """The SQLite corpus. One `import_exports` call is one transaction: it lands whole or not at all."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # Autocommit mode: every write below opens and closes its own transaction explicitly.
        self.connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            self._prepare()
        except sqlite3.DatabaseError as error:
            self.connection.close()
            raise TalkalikeError(f"{self.path} is not a readable talkalike store ({error}); move it aside and "
                                 "import your chats again.") from None

    def _prepare(self) -> None:
        self.connection.execute("PRAGMA foreign_keys = ON")  # makes ON DELETE CASCADE remove a chat's messages
        # WAL + synchronous=NORMAL: a commit is still atomic and survives a crash of the program, and bulk imports
        # avoid an fsync per page; only a power cut can lose the very last commit.
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = NORMAL")
        self.connection.execute("PRAGMA cache_size = -65536")  # 64 MiB: the identity index stays in memory on import
        version = self.connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self.connection.close()
            raise TalkalikeError(f"{self.path} was written by a newer talkalike (schema {version}); upgrade talkalike.")
        self.connection.executescript(SCHEMA)
        self.connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open(cls, home: Path) -> "Store":
        """The store in the data folder `home` (created on first use)."""
        return cls(store_path(home))

    def close(self) -> None:
        """Close the database connection."""
        self.connection.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def import_export(self, parsed: ParsedExport, chat: str | None = None) -> ImportCounts:
        """Add one export's new messages to chat `chat` (default: the export's own name), in one transaction."""
        return self.import_exports([(parsed, chat)])[0]

    def import_exports(self, items: list[tuple[ParsedExport, str | None]], progress: bool = False) -> list[ImportCounts]:
        """Add several exports in ONE transaction: a failure or Ctrl-C anywhere leaves the store exactly as it was."""
        connection = self.connection
        counts = []
        bar = None
        if progress and sys.stderr.isatty():  # tqdm would hide itself off a terminal anyway; skip its import cost
            from tqdm import tqdm

            total = sum(len(parsed.messages) for parsed, _ in items)
            bar = tqdm(total=total, unit="msg", desc="import", file=sys.stderr, mininterval=0.5)
        connection.execute("BEGIN IMMEDIATE")
        try:
            for parsed, chat in items:
                name = chat or parsed.name
                chat_id = self._chat_id(name, parsed.source)
                before = connection.total_changes
                messages = parsed.messages if bar is None else _counted(parsed.messages, bar)
                connection.executemany(INSERT, _rows(chat_id, messages))
                added = connection.total_changes - before
                counts.append(ImportCounts(name, added, len(parsed.messages) - added))
            connection.execute("COMMIT")
        except BaseException:
            # A Ctrl-C that lands just after COMMIT returns finds the import complete: nothing to undo then.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            if bar is not None:
                bar.close()
        return counts

    def _chat_id(self, name: str, source: str) -> int:
        """The id of chat `name`, created if new; a chat holds one source's messages."""
        row = self.connection.execute("SELECT id, source FROM chats WHERE name = ?", (name,)).fetchone()
        if row is None:
            return self.connection.execute("INSERT INTO chats (name, source) VALUES (?, ?)", (name, source)).lastrowid
        if row[1] != source:
            raise TalkalikeError(f"chat {name!r} already holds {row[1]} messages; import this {source} export "
                                 "under another name with --chat NAME.")
        return row[0]

    def chats(self) -> list[ChatInfo]:
        """Every stored chat with its message count and first/last time, by name."""
        rows = self.connection.execute(
            "SELECT c.name, c.source, count(m.id), min(m.time), max(m.time) FROM chats c "
            "LEFT JOIN messages m ON m.chat_id = c.id GROUP BY c.id ORDER BY c.name").fetchall()
        return [ChatInfo(name, source, n, _time(first), _time(last)) for name, source, n, first, last in rows]

    def people(self) -> list[Person]:
        """Every sender across chats, most messages first; system events are not counted."""
        rows = self.connection.execute(
            "SELECT m.sender, c.name, count(*) FROM messages m JOIN chats c ON c.id = m.chat_id "
            "WHERE m.sender IS NOT NULL AND m.kind != 'system' GROUP BY m.sender, c.name ORDER BY c.name").fetchall()
        totals: Counter = Counter()
        chats: dict[str, list[str]] = {}
        for sender, chat, n in rows:
            totals[sender] += n
            chats.setdefault(sender, []).append(chat)
        return [Person(sender, n, tuple(chats[sender])) for sender, n in sorted(totals.items(), key=lambda i: (-i[1], i[0]))]

    def messages(self, chats: list[str] | None = None) -> Iterator[tuple[str, Message]]:
        """(chat name, message) for the given chats (default all), ordered by chat, then time, then file order."""
        query = ("SELECT c.name, m.time, m.sender, m.text, m.kind, m.edited FROM messages m "
                 "JOIN chats c ON c.id = m.chat_id")
        params: list = []
        if chats is not None:
            known = {info.name for info in self.chats()}
            missing = [name for name in chats if name not in known]
            if missing:
                raise TalkalikeError(f"no chat named {', '.join(map(repr, missing))}; stored chats: "
                                     f"{', '.join(sorted(known)) or 'none (run `talkalike import FILE`)'}.")
            query += f" WHERE c.name IN ({', '.join('?' * len(chats))})"
            params = list(chats)
        query += " ORDER BY c.name, m.time, m.seq, m.id"
        for name, time, sender, text, kind, edited in self.connection.execute(query, params):
            yield name, Message(datetime.fromisoformat(time), sender, text, kind, bool(edited))

    def remove_chat(self, name: str) -> int:
        """Remove chat `name` and all its messages; returns how many messages went."""
        row = self.connection.execute(
            "SELECT c.id, count(m.id) FROM chats c LEFT JOIN messages m ON m.chat_id = c.id WHERE c.name = ? "
            "GROUP BY c.id", (name,)).fetchone()
        if row is None:
            known = ", ".join(info.name for info in self.chats()) or "none"
            raise TalkalikeError(f"no chat named {name!r}; stored chats: {known}.")
        # One statement is its own transaction; the foreign key's ON DELETE CASCADE removes the messages with it.
        self.connection.execute("DELETE FROM chats WHERE id = ?", (row[0],))
        return row[1]


def _counted(messages: list[Message], bar) -> Iterator[Message]:
    """The messages, advancing the progress bar every 10,000 (per-message updates would cost more than the insert)."""
    for i, message in enumerate(messages, 1):
        if i % 10_000 == 0:
            bar.update(10_000)
        yield message
    bar.update(len(messages) % 10_000)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- the import-stage commands -----------------------------------------------------------------------------------


def _sources():
    # Imported here so that `talkalike chats` and `people` do not load the parsers they never use.
    from talkalike import sources

    return sources


def cmd_parse(args) -> int:
    """`talkalike parse FILE`: one JSON object per entry to stdout, in file order; problems to stderr; stores nothing."""
    exports = _sources().read_exports(args.file, args.date_order)
    try:
        for parsed in exports:
            extra = {"chat": parsed.name} if len(exports) > 1 else {}
            _describe_problems(parsed, args.file, sys.stderr)
            lines = (json.dumps(message.to_json() | extra, ensure_ascii=False) for message in parsed.messages)
            for line in lines:
                sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `talkalike parse FILE | head` closed the pipe: that is a normal end, not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _describe_problems(parsed: ParsedExport, file: str, out) -> None:
    """Notes and every unparsed line, with its line number and reason."""
    for note in parsed.notes:
        print(f"{file}: note: {note}", file=out)
    for item in parsed.unparsed:
        print(f"{file}:{item.line_no}: unparsed ({item.reason}): {item.line!r}", file=out)


def cmd_import(args) -> int:
    """`talkalike import FILE... [--chat NAME]`: read every file first, then store them all in one transaction."""
    sources = _sources()
    items = []
    for file in args.files:
        exports = sources.read_exports(file, args.date_order)
        if args.chat and len(exports) > 1:
            raise TalkalikeError(f"{file} holds {len(exports)} chats, so --chat cannot name them all; "
                                 "import it without --chat to keep each chat's own name.")
        items.extend((file, parsed) for parsed in exports)
    # Only now, with every file read without error, is the store opened (and created on first use).
    total = sum(len(parsed.messages) for _, parsed in items)
    say(f"storing {total:,} entries from {len(args.files)} file(s) in one transaction")
    with Store.open(resolve_home(args.home)) as store:
        counts = store.import_exports([(parsed, args.chat) for _, parsed in items], progress=True)
    for (file, parsed), count in zip(items, counts, strict=True):
        print(import_report(file, parsed, count))
    from talkalike import console

    console.done(f"{sum(c.added for c in counts):,} new messages stored",
                 "talkalike people, then talkalike dataset --me NAME --out DIR")
    return 0


def import_report(file: str, parsed: ParsedExport, counts: ImportCounts) -> str:
    """What one file held and what its import did: kinds, senders, dates, format, notes, unparsed lines, counts."""
    messages = parsed.messages
    kinds = Counter(message.kind for message in messages)
    senders = Counter(message.sender for message in messages if message.sender is not None and message.kind != "system")
    lines = [f"{file} -> chat {counts.chat!r} ({parsed.source}: {parsed.format})"]
    by_kind = ", ".join(f"{kind} {kinds[kind]:,}" for kind in KINDS if kinds[kind])
    lines.append(f"  entries: {len(messages):,} ({by_kind})")
    lines.append("  senders: " + (", ".join(f"{name} {n:,}" for name, n in senders.most_common()) or "none"))
    if messages:
        first = min(message.time for message in messages)
        last = max(message.time for message in messages)
        lines.append(f"  dates:   {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}")
    lines.extend(f"  note:    {note}" for note in parsed.notes)
    lines.append(f"  unparsed lines: {len(parsed.unparsed)}")
    lines.extend(f"    line {item.line_no}: {item.reason}: {item.line!r}" for item in parsed.unparsed)
    lines.append(f"  added {counts.added:,} new, skipped {counts.skipped:,} already stored")
    return "\n".join(lines)


def _existing_store(args) -> Store | None:
    """The store if one exists; listing commands never create it."""
    path = store_path(resolve_home(args.home))
    return Store(path) if path.exists() else None


def cmd_chats(args) -> int:
    """`talkalike chats [--json] [--remove NAME]`: list stored chats, or remove one with its messages."""
    store = _existing_store(args)
    if args.remove:
        if store is None:
            raise TalkalikeError(f"no chat named {args.remove!r}: nothing is imported yet.")
        with store:
            removed = store.remove_chat(args.remove)
        print(f"removed chat {args.remove!r} and its {removed:,} messages")
        return 0
    chats = []
    if store is not None:
        with store:
            chats = store.chats()
    if args.json:
        print(json.dumps([_chat_json(info) for info in chats], ensure_ascii=False, indent=2))
        return 0
    if not chats:
        say("no chats yet; import one with `talkalike import FILE`")
        return 0
    width = max(len(info.name) for info in chats)
    for info in chats:
        span = f"{info.first:%Y-%m-%d} to {info.last:%Y-%m-%d}" if info.first else "no messages"
        print(f"{info.name:<{width}}  {info.source:<8}  {info.messages:>9,} messages  {span}")
    return 0


def _chat_json(info: ChatInfo) -> dict:
    first = info.first.isoformat(timespec="seconds") if info.first else None
    last = info.last.isoformat(timespec="seconds") if info.last else None
    return {"name": info.name, "source": info.source, "messages": info.messages, "first": first, "last": last}


def cmd_people(args) -> int:
    """`talkalike people [--json]`: senders across all chats with their message counts and chats."""
    store = _existing_store(args)
    people = []
    if store is not None:
        with store:
            people = store.people()
    if args.json:
        rows = [{"name": p.name, "messages": p.messages, "chats": list(p.chats)} for p in people]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not people:
        say("no senders yet; import a chat with `talkalike import FILE`")
        return 0
    width = max(len(p.name) for p in people)
    for p in people:
        print(f"{p.name:<{width}}  {p.messages:>9,} messages  in {', '.join(p.chats)}")
    return 0
