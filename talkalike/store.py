"""The local corpus: every imported chat in one SQLite file in the data folder, and the import-stage commands.

`talkalike import FILE...` fills it, `talkalike chats` and `talkalike people` list it, `talkalike parse FILE` shows what an
import would store without storing it. Later stages read `Store.open(home).messages()`.
Try it: `talkalike import 'WhatsApp Chat with Maya.zip' && talkalike chats`.
"""

import json
import os
import shlex
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from talkalike.errors import Interrupted, TalkalikeError
from talkalike.files import say
from talkalike.home import resolve_home, store_path
from talkalike.message import KINDS, Message, ParsedExport

SCHEMA_VERSION = 2  # 2: chats.date_order
SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    date_order TEXT          -- WhatsApp's day/month order (dmy, mdy, ymd) the chat was first stored in, kept by later imports
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

# How long a command waits for another one that is writing to the store (a large import takes a minute or two) before
# it gives up; it says it is waiting after BUSY_POLL_S.
BUSY_WAIT_S = 300.0
BUSY_POLL_S = 0.5


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
    updated: int = 0  # stored before, edited since: the stored text was replaced by the edited one


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


class ReadOnlyStore(TalkalikeError):
    """The store's file or folder cannot be written: read it with `Store(path, readonly=True)` instead."""


class Store:
    """The SQLite corpus. One `import_exports` call is one transaction: it lands whole or not at all.

    `readonly=True` opens it for reading only, which also works in a read-only folder: the file is attached to an
    in-memory database, so the tables other stages keep beside the corpus (the privacy map) are copied there, and what
    they write stays in memory instead of failing."""

    def __init__(self, path: str | os.PathLike, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise TalkalikeError(f"{self.path} is a folder, but the store must be a file there; move the folder aside "
                                 "(or choose another data folder with --home).")
        self.connection = None
        try:
            try:
                self.connection = self._connect(immutable=False)
                self._prepare()
            except sqlite3.OperationalError as error:
                if not readonly or "unable to open" not in str(error):
                    raise
                # A store in a read-only folder: SQLite cannot make its WAL index there, and nobody can write to it
                # either, so reading it as an unchanging file is safe.
                self.close()
                self.connection = self._connect(immutable=True)
                self._prepare()
        except sqlite3.DatabaseError as error:
            self.close()
            raise self._problem(error) from None
        except BaseException:
            self.close()
            raise

    def _connect(self, immutable: bool) -> sqlite3.Connection:
        # Autocommit mode: every write below opens and closes its own transaction explicitly.
        if not self.readonly:
            if self.path.exists() and not os.access(self.path, os.W_OK):
                raise ReadOnlyStore(self._read_only_words("the file is read-only"))
            return sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_WAIT_S)
        connection = sqlite3.connect(":memory:", uri=True, isolation_level=None, timeout=BUSY_WAIT_S)
        uri = self.path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
        try:
            connection.execute("ATTACH DATABASE ? AS stored", (uri,))
        except BaseException:
            connection.close()
            raise
        return connection

    def _read_only_words(self, why: str) -> str:
        return (f"cannot write to the store {self.path} ({why}). `talkalike chats`, `people` and `dataset` still read "
                "it; to import, make the data folder writable or choose another with --home.")

    def _problem(self, error: sqlite3.DatabaseError) -> TalkalikeError:
        """The store-open failure in words: corrupt, busy, read-only or unopenable are different problems."""
        text = str(error)
        if "locked" in text or "busy" in text:
            return TalkalikeError(f"the store {self.path} is busy: another talkalike command is writing to it. Try "
                                  "again when it has finished.")
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return ReadOnlyStore(self._read_only_words(f"{text}: its folder or file is read-only"))
        if "disk is full" in text or "disk I/O" in text:
            return TalkalikeError(f"cannot write to the store {self.path} ({text}); free some disk space and run it "
                                  "again.")
        return TalkalikeError(f"{self.path} is not a readable talkalike store ({text}); it is damaged or not a "
                              "talkalike store. Move it aside and import your chats again.")

    def _prepare(self) -> None:
        connection = self.connection
        connection.execute("PRAGMA foreign_keys = ON")  # makes ON DELETE CASCADE remove a chat's messages
        schema = "stored" if self.readonly else "main"
        # also the first read, which fails on a file that is not SQLite
        version = connection.execute(f"PRAGMA {schema}.user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TalkalikeError(f"{self.path} was written by a newer talkalike (schema {version}); upgrade talkalike.")
        if self.readonly:
            side = connection.execute("SELECT name, sql FROM stored.sqlite_master WHERE type = 'table' AND name NOT IN "
                                      "('chats', 'messages') AND name NOT LIKE 'sqlite_%'").fetchall()
            for name, sql in side:
                connection.execute(sql)  # unqualified: created in the in-memory main database
                connection.execute(f'INSERT INTO main."{name}" SELECT * FROM stored."{name}"')
            return
        # A damaged store is found before anything is written to it, so a write cannot make it worse.
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("quick_check: " + "; ".join(" ".join(p.split()) for p in problems))
        # WAL + synchronous=NORMAL: a commit is still atomic and survives a crash of the program, and bulk imports
        # avoid an fsync per page; only a power cut can lose the very last commit.
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._wait(lambda: connection.execute("PRAGMA journal_mode = WAL"))
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA cache_size = -65536")  # 64 MiB: the identity index stays in memory on import
        if version < SCHEMA_VERSION:
            self._wait(self._migrate)

    def _migrate(self) -> None:
        """Create the tables, or bring an older store's up to date, in one transaction."""
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";\n"):  # executescript would commit the open transaction
                if statement.strip():
                    connection.execute(statement)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(chats)")}
            if "date_order" not in columns:  # schema 1
                connection.execute("ALTER TABLE chats ADD COLUMN date_order TEXT")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _wait(self, write):
        """Run `write`; when another command holds the store's write lock, say so and wait up to BUSY_WAIT_S for it."""
        connection = self.connection
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_POLL_S * 1000)}")
        try:
            try:
                return write()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
            say(f"the store is busy: another talkalike command is writing to it; waiting up to {BUSY_WAIT_S:.0f} s "
                "for it to finish (Ctrl-C to stop)")
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")
            try:
                return write()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                raise TalkalikeError(f"the store {self.path} is still busy after {BUSY_WAIT_S:.0f} s: another "
                                     "talkalike command is writing to it. Try again when it has finished.") from None
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")

    @classmethod
    def open(cls, home: Path, readonly: bool = False) -> "Store":
        """The store in the data folder `home` (created on first use, unless `readonly`)."""
        return cls(store_path(home), readonly=readonly)

    def close(self) -> None:
        """Close the database connection."""
        if self.connection is not None:
            self.connection.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def import_export(self, parsed: ParsedExport, chat: str | None = None) -> ImportCounts:
        """Add one export's new messages to chat `chat` (default: the export's own name), in one transaction."""
        return self.import_exports([(parsed, chat)])[0]

    def date_orders(self) -> dict[str, str]:
        """The day/month order each WhatsApp chat was stored in, by chat name."""
        rows = self.connection.execute("SELECT name, date_order FROM chats WHERE date_order IS NOT NULL")
        return dict(rows.fetchall())

    def import_exports(self, items: list[tuple[ParsedExport, str | None]], progress: bool = False) -> list[ImportCounts]:
        """Add several exports in ONE transaction: a failure or Ctrl-C anywhere leaves the store exactly as it was."""
        connection = self.connection
        counts = []
        bar = None
        if progress and sys.stderr.isatty():  # tqdm would hide itself off a terminal anyway; skip its import cost
            from tqdm import tqdm

            total = sum(len(parsed.messages) for parsed, _ in items)
            bar = tqdm(total=total, unit="msg", desc="import", file=sys.stderr, mininterval=0.5)
        self._wait(lambda: connection.execute("BEGIN IMMEDIATE"))
        try:
            for parsed, chat in items:
                name = chat or parsed.name
                chat_id = self._chat_id(name, parsed)
                updated = self._update_edited(chat_id, parsed.messages)
                before = connection.total_changes
                messages = parsed.messages if bar is None else _counted(parsed.messages, bar)
                connection.executemany(INSERT, _rows(chat_id, messages))
                added = connection.total_changes - before
                counts.append(ImportCounts(name, added, len(parsed.messages) - added - updated, updated))
            connection.execute("COMMIT")
        except BaseException as error:
            committed = not connection.in_transaction  # SQLite also rolls back itself on some errors (a full disk)
            if not committed:
                connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.DatabaseError):
                raise self._problem(error) from None
            if committed and isinstance(error, KeyboardInterrupt):
                # Ctrl-C just after COMMIT returned: the import is complete, and the user must hear that.
                raise Interrupted("interrupted just after the import was stored; every file given is in the store "
                                  "(`talkalike chats` lists them).") from None
            raise
        finally:
            if bar is not None:
                bar.close()
        return counts

    def _update_edited(self, chat_id: int, messages: list[Message]) -> int:
        """Replace the stored text of messages edited since an earlier export; returns how many were replaced.

        An edited entry is known by its time, sender and kind: when no stored entry has its text, and exactly one
        stored entry of that minute and sender is missing from this export, that one is its earlier version."""
        edited = [m for m in messages if m.edited]
        if not edited:
            return 0
        here: dict[tuple, set] = {}
        for m in messages:
            here.setdefault((m.time, m.sender, m.kind), set()).add(m.text)
        updated = 0
        for m in edited:
            time = m.time.isoformat(timespec="seconds")
            rows = self.connection.execute(
                "SELECT id, text FROM messages WHERE chat_id = ? AND time = ? AND ifnull(sender, '') = ? AND kind = ?",
                (chat_id, time, m.sender or "", m.kind)).fetchall()
            if any(text == m.text for _, text in rows):
                continue  # already stored as it reads now
            earlier = [row_id for row_id, text in rows if text not in here[(m.time, m.sender, m.kind)]]
            if len(earlier) == 1:
                self.connection.execute("UPDATE messages SET text = ?, edited = 1 WHERE id = ?", (m.text, earlier[0]))
                updated += 1
        return updated

    def _chat_id(self, name: str, parsed: ParsedExport) -> int:
        """The id of chat `name`, created if new; a chat holds one source's messages, read in one date order."""
        source = parsed.source
        row = self.connection.execute("SELECT id, source FROM chats WHERE name = ?", (name,)).fetchone()
        if row is None:
            return self.connection.execute("INSERT INTO chats (name, source, date_order) VALUES (?, ?, ?)",
                                           (name, source, parsed.date_order)).lastrowid
        if row[1] != source:
            other = f"{name} ({source})"
            raise TalkalikeError(f"chat {name!r} already holds {row[1]} messages, so this {source} chat cannot join it; "
                                 f"store it under another name with --chat {_quote(f'{parsed.name}={other}')} "
                                 f"(or --chat {_quote(other)} for a file holding one chat).")
        if parsed.date_order is not None:
            self.connection.execute("UPDATE chats SET date_order = ? WHERE id = ? AND date_order IS NULL",
                                    (parsed.date_order, row[0]))
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
        try:
            self._wait(lambda: self.connection.execute("DELETE FROM chats WHERE id = ?", (row[0],)))
        except sqlite3.DatabaseError as error:
            raise self._problem(error) from None
        return row[1]


def _counted(messages: list[Message], bar) -> Iterator[Message]:
    """The messages, advancing the progress bar every 10,000 (per-message updates would cost more than the insert)."""
    for i, message in enumerate(messages, 1):
        if i % 10_000 == 0:
            bar.update(10_000)
        yield message
    bar.update(len(messages) % 10_000)


def _quote(text: str) -> str:
    """`text` as the shell needs it on a command line."""
    return shlex.quote(text)


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
    except OSError as error:  # a full disk (or /dev/full) under `parse FILE > out.jsonl`
        # what is still buffered would fail again at exit, with a traceback: send it nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise TalkalikeError(f"cannot write the output ({error.strerror or error}); the entries printed so far are "
                             "incomplete.") from None
    return 0


def _describe_problems(parsed: ParsedExport, file: str, out) -> None:
    """Notes and every unparsed line, with its line number and reason."""
    for note in parsed.notes:
        print(f"{file}: note: {note}", file=out)
    for item in parsed.unparsed:
        print(f"{file}:{item.line_no}: unparsed ({item.reason}): {item.line!r}", file=out)


def cmd_import(args) -> int:
    """`talkalike import FILE... [--chat NAME | --chat EXPORTED=NAME]`: read every file first, then store them all in one
    transaction."""
    counts = import_files(args)
    from talkalike import console

    console.done(f"{sum(c.added for c in counts):,} new messages stored",
                 "talkalike people, then talkalike dataset --me NAME --out DIR")
    return 0


def import_files(args) -> list[ImportCounts]:
    """What `talkalike import` does before its closing line (`talkalike update` imports this way too): read every
    file of `args.files`, store them in one transaction, print a report per file; the counts per file."""
    sources = _sources()
    items = []
    for file in args.files:
        items.extend((file, parsed) for parsed in sources.read_exports(file, args.date_order))
    targets = _targets(args, items)
    # Only now, with every file read without error, is the store opened (and created on first use).
    with Store.open(resolve_home(args.home)) as store:
        items = _keep_date_orders(args, items, targets, store.date_orders())
        total = sum(len(parsed.messages) for _, parsed in items)
        say(f"storing {total:,} entries from {len(args.files)} file(s) in one transaction")
        try:
            counts = store.import_exports([(parsed, chat) for (_, parsed), chat in zip(items, targets, strict=True)],
                                          progress=True)
        except KeyboardInterrupt:
            raise Interrupted("interrupted before the import was stored; the store is as it was.") from None
    try:
        for (file, parsed), count in zip(items, counts, strict=True):
            print(import_report(file, parsed, count))
    except KeyboardInterrupt:
        raise Interrupted("interrupted after the import was stored: every file given is in the store, only its "
                          "report was cut short (`talkalike chats` lists the chats).") from None
    return counts


def _targets(args, items: list[tuple[str, ParsedExport]]) -> list[str]:
    """The chat each export goes to: its own name, the one --chat NAME gives, or NAME from --chat EXPORTED=NAME."""
    names = {parsed.name for _, parsed in items}
    mapping, plain = {}, []
    for value in args.chat or []:
        exported, sep, target = value.partition("=")
        if sep and exported in names and target.strip():
            mapping[exported] = target.strip()
        else:
            plain.append(value)
    if len(plain) > 1:
        raise TalkalikeError("give --chat NAME once (every file goes to that chat), or --chat 'EXPORTED=NAME' once per "
                             "chat to rename.")
    if plain:
        for file in args.files:
            held = [parsed for f, parsed in items if f == file]
            if len(held) > 1:
                example = f"{held[0].name}={held[0].name} (telegram)"
                raise TalkalikeError(f"{file} holds {len(held)} chats, so --chat {plain[0]!r} cannot name them all; "
                                     f"import it without --chat to keep each chat's own name, or rename single chats "
                                     f"with --chat {_quote(example)}.")
        if "=" in plain[0] and not mapping:
            say(f"note: no chat named {plain[0].partition('=')[0]!r} in the files, so --chat {plain[0]!r} names the "
                "chat as a whole")
    return [mapping.get(parsed.name) or (plain[0] if plain else parsed.name) for _, parsed in items]


def _keep_date_orders(args, items: list[tuple[str, ParsedExport]], targets: list[str],
                      stored: dict[str, str]) -> list[tuple[str, ParsedExport]]:
    """Read each WhatsApp export in the day/month order its chat already has, so that overlapping exports store the
    same messages under the same dates. A file whose own dates decide another order is a conflict: an error."""
    orders = dict(stored)
    out = []
    for (file, parsed), chat in zip(items, targets, strict=True):
        known = orders.get(chat)
        mine = parsed.date_order
        if mine in ("dmy", "mdy") and known in ("dmy", "mdy") and mine != known:
            if parsed.order_known or args.date_order:
                raise TalkalikeError(
                    f"{file} reads its dates as {_ORDER_WORDS[mine]}, but chat {chat!r} holds dates read as "
                    f"{_ORDER_WORDS[known]}. If this file's dates are {_ORDER_WORDS[known]}, pass --date-order {known}; "
                    f"if the stored ones are wrong, remove the chat (talkalike chats --remove {_quote(chat)}) and import "
                    f"all its exports again with --date-order {mine}.")
            # this file could be read either way: read it as the chat was
            again = [p for p in _sources().read_exports(file, known) if p.name == parsed.name]
            parsed = again[0]
            parsed.notes = [note for note in parsed.notes if "ambiguous" not in note]
            parsed.notes.append(f"Day and month order is ambiguous in this file: read as {_ORDER_WORDS[known]}, as "
                                f"chat {chat!r} was stored.")
        if mine in ("dmy", "mdy") and known is None:
            orders[chat] = parsed.date_order
        out.append((file, parsed))
    return out


_ORDER_WORDS = {"dmy": "day/month/year", "mdy": "month/day/year", "ymd": "year/month/day"}


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
    updated = f", updated {counts.updated:,} edited since" if counts.updated else ""
    lines.append(f"  added {counts.added:,} new, skipped {counts.skipped:,} already stored{updated}")
    return "\n".join(lines)


def _existing_store(args, readonly: bool = True) -> Store | None:
    """The store if one exists; listing commands never create it, and read it read-only."""
    path = store_path(resolve_home(args.home))
    return Store(path, readonly=readonly) if path.exists() else None


def cmd_chats(args) -> int:
    """`talkalike chats [--json] [--remove NAME]`: list stored chats, or remove one with its messages."""
    store = _existing_store(args, readonly=not args.remove)
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
