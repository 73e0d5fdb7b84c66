"""The privacy pass: personal data becomes consistent placeholders before any text reaches a model.

Runs after `clean` inside `talkalike dataset` (on by default; `--no-privacy` turns it off). Try it with

    from talkalike.prepare.privacy import pseudonymise, mask
    kept, counts = pseudonymise(messages, store, chat="Noa")   # counts: Counter({'PHONE': 3, 'EMAIL': 1, ...})
    mask("call me on 054-123-4567 or [PHONE_2]")               # 'call me on [PHONE] or [PHONE_2]'

What is personal data, and why shapes decide rather than validators, is `talkalike.prepare.pii`: phone-shaped digit
runs of 7-15 digits whether libphonenumber calls them valid or not, e-mails in any script and spelled out, IBANs in
any case, cards, national IDs of many countries, URLs. Placeholders are numbered per kind (`[PHONE_1]`, `[PHONE_2]`,
...); the same value in any spelling is one placeholder (phones keyed by E.164, so `054-123-4567` and
`+972 54-123-4567` match).

- The scan runs on a whole turn (consecutive messages of one sender) with the bubble boundaries read as a space, so
  `054-765` then `4321`, or a card sent in two halves, is found; the placeholder goes where the value starts and the
  rest of it leaves the later bubble (a bubble left empty is dropped).
- Phone regions: every region the chat's own +CC numbers name (most common first), after `--region` when given, then
  the store's most common one. Regions only decide a national number's key; a phone-shaped run is replaced whatever
  they say.
- Chat, group and sender names are scanned like text (`Vaad Bait 052-555-9876` -> `Vaad Bait [PHONE_1]`), and a
  sender name that is a phone number becomes its placeholder.
- NAME (only with `scrub_names`): the names of third parties, i.e. senders in the store (and `PrivacyConfig.names`)
  that are neither the persona nor a participant of the current chat; whole words, case-insensitive; a first name
  alone counts too.
- `mask(text)`: the same scan for what the twin generates, before chat, serve and the API show it: placeholders pass,
  anything else that looks like personal data becomes `[PHONE]`, `[EMAIL]`, ...
The mapping original -> placeholder lives only in the local SQLite store (table `pii_map`), so re-running gives the same
placeholders; it never goes into a dataset.
"""

import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import phonenumbers

from talkalike.errors import TalkalikeError
from talkalike.message import Message
from talkalike.prepare import pii
from talkalike.prepare.pii import CARD, EMAIL, IBAN, ID, NUMBER, PHONE, URL

NAME = "NAME"
KINDS = (PHONE, EMAIL, URL, CARD, IBAN, ID, NUMBER, NAME)

PII_TABLE = """
CREATE TABLE IF NOT EXISTS pii_map (
    kind TEXT NOT NULL,         -- PHONE, EMAIL, URL, CARD, IBAN, ID, NUMBER, NAME
    original TEXT NOT NULL,     -- normalised: E.164 phone, lower-case e-mail or name, compact IBAN/card/ID
    placeholder TEXT NOT NULL,  -- [PHONE_1] ...
    PRIMARY KEY (kind, original)
)
"""

_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D+")
_PHONE_NAME = re.compile(r"^[+\d][\d\s().\-\u2011]{6,}$")  # a sender name that is a phone number
_BIDI = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"))
TURN_JOIN = " "  # bubbles of one turn are scanned as one text, joined by a space, a separator every digit run allows


@dataclass(frozen=True)
class PrivacyConfig:
    """What the privacy pass replaces; works with no arguments."""

    enabled: bool = True  # personal data is pseudonymised before it reaches any model, unless switched off
    region: str | None = None  # phone region tried first; the chat's own +CC regions are always tried too
    scrub_names: bool = False  # third-party names are also useful context; scrub them only on request
    names: tuple[str, ...] = ()  # extra third-party names to scrub (with scrub_names)


@dataclass(frozen=True)
class PrivacyResult:
    """Pseudonymised messages and replacements per kind; unpacks as `kept, counts = pseudonymise(...)`."""

    messages: list[Message]
    counts: Counter
    region: str | None = None  # the first phone region tried (given or inferred)
    title: str | None = None  # the `title` passed in, pseudonymised like a message
    regions: tuple[str, ...] = ()  # every phone region tried, in order

    def __iter__(self) -> Iterator:
        return iter((self.messages, self.counts))


def check_region(region: str | None) -> str | None:
    """A phone region as libphonenumber knows it (`il` -> `IL`); a clear error for one it does not know."""
    if region is None:
        return None
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise TalkalikeError(f"--region {region!r} is not a country code libphonenumber knows; use two letters such "
                             "as IL, US, GB or DE (or leave it out: the chat's own +CC numbers name their regions)")
    return code


def digit_count(text: str) -> int:
    """How many digits the text has (fast for the many texts that have none)."""
    return 0 if _DIGIT.search(text) is None else len(_NON_DIGIT.sub("", text))


def phone_sender(name: str) -> bool:
    """True when a sender name is a phone number (an unsaved contact)."""
    return bool(_PHONE_NAME.match(name.translate(_BIDI).strip()))


def _name_forms(name: str) -> list[str]:
    """A name as the text may say it: the full name and the first name, lower-case."""
    full = name.translate(_BIDI).strip().lstrip("~ ").strip().lower()
    return [full, full.split()[0]] if full else []


def _regions(texts: Iterable[str]) -> Counter:
    regions: Counter = Counter()
    for text in texts:
        if "+" not in text or digit_count(text) < 7:
            continue
        for match in phonenumbers.PhoneNumberMatcher(text.translate(_BIDI), None):
            region = phonenumbers.region_code_for_country_code(match.number.country_code)  # 44 -> GB, not GG
            if region not in ("ZZ", "001"):  # unknown or non-geographic codes say nothing of a place
                regions[region] += 1
    return regions


def infer_regions(messages: Iterable[Message]) -> list[str]:
    """Every region of +CC phone numbers in the bodies and sender names, most common first (first seen wins ties)."""
    return [region for region, _ in _regions(text for m in messages for text in (m.text, m.sender or "")).most_common()]


def infer_region(messages: Iterable[Message]) -> str | None:
    """The most common region of +CC phone numbers in the bodies and sender names (first seen wins ties), else None."""
    regions = infer_regions(messages)
    return regions[0] if regions else None


# The store-wide vote per (database file, newest message id): a scan costs ~0.5 s on 1M messages, and the dataset
# stage asks once per chat, so without this a store of 40 chats without +CC numbers would spend 20 s here.
_STORE_REGIONS: dict[tuple[str, int | None], str | None] = {}


def infer_store_region(connection: sqlite3.Connection, sample: int = 5000) -> str | None:
    """The same vote over the whole store (up to `sample` entries that hold a '+'), for chats without +CC numbers."""
    path = connection.execute("PRAGMA database_list").fetchone()[2]
    key = (path, connection.execute("SELECT max(rowid) FROM messages").fetchone()[0])
    if path and key in _STORE_REGIONS:
        return _STORE_REGIONS[key]
    # Reads the store's messages table directly: one scan that stops after `sample` hits, instead of building a
    # Message for every stored row.
    rows = connection.execute("SELECT ifnull(sender, ''), text FROM messages WHERE kind != 'system' AND "
                              "(instr(text, '+') > 0 OR instr(ifnull(sender, ''), '+') > 0) LIMIT ?", (sample,))
    regions = _regions(text for row in rows for text in row)
    region = regions.most_common(1)[0][0] if regions else None
    if path:  # an in-memory database has no name to key on
        _STORE_REGIONS[key] = region
    return region


def mask(text: str) -> str:
    """Generated text with anything that looks like real personal data replaced by its kind (`[PHONE]`, `[EMAIL]`,
    ...); the dataset's placeholders (`[PHONE_2]`) pass, since they hold no personal data."""
    return mask_turn([text])[0]


def mask_turn(texts: list[str]) -> list[str]:
    """`mask` over one turn's messages, scanned as one text like the dataset's turns."""
    return replace_spans(texts, find_in_turn(texts), lambda f: f"[{f.kind}]")


_MARKER = re.compile(r"^[\[({<]?(?:at|dot|@|\.)[\])}>]?$", re.IGNORECASE)
_MARKER_START = re.compile(r"^[\[({<]?(?:a|at|d|do|dot|@|\.)?[\])}>]?$", re.IGNORECASE)
_WORD = re.compile(r"\S+")
_MARKER_REACH = 6  # the words at the end of a message read for a spelled-out `at` or `dot`


def _safe_end(text: str, lo: int = 0) -> tuple[int, int]:
    """How much of a growing message can be shown: up to the words that may still become part of a value (the last
    word, digits and short words before it, and the words around a spelled-out `at`).

    Only the words from `lo` (a word's start) on are read, so a long message costs the same per piece as a short
    one. Returns (end, lo for the next call once `end` is shown): the start of the word _MARKER_REACH + 1 before
    `end`, which keeps every word that could still hold `end` back (mask_stream's tests compare with lo=0)."""
    words = [(m.start(), m.group()) for m in _WORD.finditer(text, lo)]
    if not words:
        return len(text), lo
    hold = len(words) - 1  # the last word may still grow
    if _MARKER_START.match(words[hold][1]):  # it may grow into "[at]" or "dot": the word before may be a local part
        hold = max(0, hold - 1)
    while hold > 0 and (_DIGIT.search(words[hold - 1][1]) or len(words[hold - 1][1]) <= 2):
        hold -= 1
    for j in range(max(1, len(words) - _MARKER_REACH), len(words)):
        if _MARKER.match(words[j][1]) or "@" in words[j][1]:
            hold = min(hold, j - 1)
            break
    return words[hold][0], words[max(0, hold - _MARKER_REACH - 1)][0]


def mask_stream(events: Iterable[tuple]) -> Iterator[tuple]:
    """stream_reply's events with personal data masked (`mask_turn`): the text that cannot be part of a value yet
    streams at once; a message that ends in a digit waits for the next one, which may hold the rest of a number.
    Each piece costs the same whatever the message's length: only its unshown tail and a few words before it are
    read."""
    bubbles: list[str] = []  # messages not yet fully shown; only the first may have been shown in part
    shown = 0  # characters of bubbles[0] already sent
    lo = 0  # where _safe_end starts reading bubbles[0]
    growing = False  # the last bubble is still receiving text

    def flush() -> Iterator[tuple]:
        nonlocal bubbles, shown, lo
        # What was shown ended at a word that could not be part of a value, so the rest can be masked on its own.
        for i, text in enumerate(mask_turn([bubbles[0][shown:], *bubbles[1:]])):
            if text:
                yield ("text", text)
            if text or (i == 0 and shown):
                yield ("end_message",)
        bubbles, shown, lo = [], 0, 0

    for event in events:
        if event[0] == "text":
            if not growing:
                if bubbles and not _may_continue(bubbles[-1], event[1]):
                    yield from flush()
                bubbles.append("")
                growing = True
            bubbles[-1] += event[1]
            if len(bubbles) == 1:
                end, after = _safe_end(bubbles[0], lo)
                if end > shown:
                    yield ("text", mask_turn([bubbles[0][shown:end]])[0])
                    shown, lo = end, after
        elif event[0] == "end_message":
            growing = False
            if bubbles and not bubbles[-1].rstrip()[-1:].isdigit():
                yield from flush()
        else:
            yield event
    if bubbles:
        yield from flush()


@dataclass
class Pseudonymiser:
    """Replaces personal data with placeholders that stay the same across chats and runs (mapping in `pii_map`)."""

    connection: sqlite3.Connection | None = None  # the store's connection; None keeps the mapping in memory only
    region: str | None = None  # the phone region tried first
    third_parties: Iterable[str] = ()  # names to scrub as NAME (empty: names are not scrubbed)
    counts: Counter = field(default_factory=Counter)
    regions: Sequence[str] = ()  # more phone regions to try, after `region`

    def __post_init__(self) -> None:
        self._map: dict[tuple[str, str], str] = {}
        self._last: Counter = Counter()
        self._new: list[tuple[str, str, str]] = []
        self._plain: set[str] = set()
        self._regions = tuple(dict.fromkeys(r for r in (self.region, *self.regions) if r))
        if self.connection is not None:
            self.connection.execute(PII_TABLE)
            rows = self.connection.execute("SELECT kind, original, placeholder FROM pii_map")
            for kind, original, placeholder in rows:
                self._remember(kind, original, placeholder)
        self.set_names(self.third_parties)

    def _remember(self, kind: str, original: str, placeholder: str) -> None:
        self._map[kind, original] = placeholder
        number = int(placeholder.rsplit("_", 1)[1].rstrip("]"))
        self._last[kind] = max(self._last[kind], number)

    def placeholder(self, kind: str, original: str) -> str:
        """The placeholder for a normalised original value, made (and queued for saving) on first sight."""
        self.counts[kind] += 1
        found = self._map.get((kind, original))
        if found is None:
            found = f"[{kind}_{self._last[kind] + 1}]"
            self._remember(kind, original, found)
            self._new.append((kind, original, found))
        return found

    def set_names(self, names: Iterable[str]) -> None:
        """Scrub these third-party names (full names, and first names alone) from now on."""
        self._owners: dict[str, str] = {}  # lower-case word or full name -> lower-case full name (the mapping key)
        for name in names:
            if phone_sender(name):
                continue  # phone-number senders are PHONE placeholders already
            forms = [form for form in _name_forms(name) if len(form) >= 2]
            for form in forms:
                self._owners.setdefault(form, forms[0])
        alternatives = sorted(self._owners, key=len, reverse=True)  # the longest name wins: "Maya Cohen" over "Maya"
        self._names_re = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, alternatives)) + r")(?!\w)", re.IGNORECASE)
                          if alternatives else None)

    def text(self, text: str, keep_names: Iterable[str] = ()) -> str:
        """The text with personal data replaced; `keep_names` (lower-case) are never scrubbed as NAME."""
        return self.turn([text], keep_names)[0]

    def turn(self, texts: list[str], keep_names: Iterable[str] = ()) -> list[str]:
        """One sender's consecutive messages, scanned as one text so a value split across bubbles is found.

        A value gets its placeholder in the bubble where it starts; its rest leaves the bubbles after (which may be
        left empty)."""
        texts = self._scan(texts)
        # One alternation regex stays at a few microseconds a text even with thousands of names (measured).
        if self._names_re is not None:
            keep = {k.lower() for k in keep_names}
            texts = [self._names_re.sub(lambda m: self._name(m, keep), text) for text in texts]
        return texts

    def _scan(self, texts: list[str]) -> list[str]:
        """The texts with the personal data `pii` finds replaced (names are `turn`'s business)."""
        return replace_spans(texts, find_in_turn(texts, self._regions), lambda f: self.placeholder(f.kind, f.key))

    def sender(self, name: str | None) -> str | None:
        """A sender (or chat) name with its personal data replaced: a phone-number name becomes its [PHONE_n],
        `Dana 052-555-9876` becomes `Dana [PHONE_n]`; other names stay (speaker names are needed in groups)."""
        if name is None or name in self._plain:
            return name
        clean = name.translate(_BIDI).strip()
        [masked] = self._scan([clean])
        if masked != clean:
            return masked
        if phone_sender(name):  # a number too short or odd for the finders is still a number
            return self.placeholder(PHONE, "+" + _NON_DIGIT.sub("", clean))
        self._plain.add(name)  # asked once per message: remember the names that hold nothing
        return name

    def _name(self, match: re.Match, keep: set[str]) -> str:
        word = match.group().lower()
        if word in keep:
            return match.group()
        return self.placeholder(NAME, self._owners[word])

    def save(self) -> None:
        """Write new mapping rows to the store (no-op without a connection)."""
        if self.connection is None or not self._new:
            return
        if not self.connection.in_transaction:
            self.connection.execute("BEGIN")
        self.connection.executemany("INSERT OR IGNORE INTO pii_map (kind, original, placeholder) VALUES (?, ?, ?)",
                                    self._new)
        self.connection.commit()
        self._new.clear()


_CONTINUES = set("0123456789+-.(/\u2013 ")


def _may_continue(before: str, after: str) -> bool:
    """Whether a value could run on from one bubble into the next: digits (or their separators) on both sides."""
    return bool(before) and bool(after) and before.rstrip()[-1:] in _CONTINUES and after.lstrip()[:1] in _CONTINUES


def _across(alone: list, joined: list, texts: list[str]) -> list:
    """The spans found bubble by bubble, plus those found only in the joined turn that cross a bubble boundary.

    A crossing span wins where no bubble found anything in its place (`054-765` then `4321`), where it adds three or
    more digits the bubbles' own spans left (`my number 052` then `555 9876`), or where it is a card or IBAN whose
    halves each looked like something shorter (`4111 1111` then `1111 1111`); otherwise the bubbles' own spans stand
    (`+972 50-234-5678` then `1: ...` is a phone and a list number, not one value)."""
    bounds, start = [], 0
    for text in texts[:-1]:
        start += len(text)
        bounds.append(start)  # the joining space sits at [bound, bound + 1)
        start += len(TURN_JOIN)
    spans = list(alone)
    for f in joined:
        if not any(f.start < b + len(TURN_JOIN) and b < f.end for b in bounds):
            continue
        inside = [a for a in spans if a.start < f.end and f.start < a.end]
        joined = TURN_JOIN.join(texts)
        rest = [c for i, c in enumerate(joined[f.start:f.end], f.start)
                if c.isdigit() and not any(a.start <= i < a.end for a in inside)]
        if all(f.start <= a.start and a.end <= f.end for a in inside) and (
                not inside or f.kind in (CARD, IBAN) or len(rest) >= 3):
            spans = [a for a in spans if a not in inside] + [f]
    return sorted(spans, key=lambda f: f.start)


def find_in_turn(texts: list[str], regions: Sequence[str] = ()) -> list[pii.Found]:
    """Personal data in one sender's consecutive messages, with offsets into `TURN_JOIN.join(texts)`."""
    if len(texts) == 1:
        return pii.find(texts[0], regions)
    if not pii.maybe(TURN_JOIN.join(texts)):
        return []  # most turns: one test of the whole turn instead of one per bubble
    spans, start = [], 0
    for text in texts:
        spans += [replace(f, start=f.start + start, end=f.end + start) for f in pii.find(text, regions)]
        start += len(text) + len(TURN_JOIN)
    if len(texts) > 1 and any(_may_continue(a, b) for a, b in zip(texts, texts[1:], strict=False)):
        spans = _across(spans, pii.find(TURN_JOIN.join(texts), regions), texts)
    return spans


def replace_spans(texts: list[str], spans: list[pii.Found], name: Callable[[pii.Found], str]) -> list[str]:
    """The texts with each span replaced by `name(span)`, in the bubble where it starts; the rest of a span that
    runs on into later bubbles leaves them (which may be left empty)."""
    if not spans:
        return texts
    joined = TURN_JOIN.join(texts)
    names = [name(f) for f in spans]
    out, start = [], 0
    for text in texts:
        end = start + len(text)
        pieces, pos = [], start
        for f, placeholder in zip(spans, names, strict=True):
            if f.end <= start or f.start >= end:
                continue
            if f.start >= pos:
                pieces += [joined[pos:f.start], placeholder]
            pos = max(pos, min(f.end, end))
        piece = "".join(pieces) + joined[pos:end]
        out.append(piece.lstrip() if any(f.start < start < f.end for f in spans) else piece)
        start = end + len(TURN_JOIN)
    return out


def turns_of(messages: list[Message]) -> Iterator[list[int]]:
    """Indexes of consecutive messages of one sender: the turns the dataset will build."""
    run: list[int] = []
    for i, m in enumerate(messages):
        if run and messages[run[-1]].sender != m.sender:
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def pseudonymise(messages: Iterable[Message], store=None, chat: str = "", region: str | None = None,
                 scrub_names: bool | None = None, keep: Iterable[str] = (), names: Iterable[str] | None = None,
                 config: PrivacyConfig | None = None, title: str | None = None) -> PrivacyResult:
    """Pseudonymise one chat's messages (mapping kept in `store`, a Store or sqlite3 connection, or None).

    `keep`: names never scrubbed or changed (the persona); the chat's own senders are kept too. `names`: every sender
    in the store, for `scrub_names` (None: read from the store, one scan per call; pass it when calling per chat).
    `title`: the chat's name, which the dataset's contact line shows to the model: treated as one more message text.
    """
    config = config or PrivacyConfig()
    messages = list(messages)
    if not config.enabled:
        return PrivacyResult(messages, Counter(), None, title)
    connection = store if isinstance(store, sqlite3.Connection) or store is None else store.connection
    given = check_region(region or config.region)
    regions = [*([given] if given else []), *infer_regions(messages)]
    if not regions and connection is not None:
        regions = [r for r in [infer_store_region(connection)] if r]
    participants = {m.sender for m in messages if m.sender is not None} | set(keep)
    third_parties: list[str] = []
    if config.scrub_names if scrub_names is None else scrub_names:
        if names is None and connection is not None:
            rows = connection.execute("SELECT DISTINCT sender FROM messages WHERE sender IS NOT NULL")
            names = [row[0] for row in rows]
        third_parties = [n for n in [*(names or ()), *config.names] if n not in participants]
    pseudo = Pseudonymiser(connection, None, third_parties, regions=regions)
    keep_lower = {word for name in participants for word in _name_forms(name)}
    out: list[Message] = []
    for run in turns_of(messages):
        texts = pseudo.turn([messages[i].text for i in run], keep_lower)
        for i, text in zip(run, texts, strict=True):
            m = messages[i]
            if not text.strip() and m.text.strip():
                continue  # all of it was the rest of a value that started in the bubble before
            sender = m.sender if m.sender in keep else pseudo.sender(m.sender)
            out.append(m if text == m.text and sender == m.sender else replace(m, text=text, sender=sender))
    if title is not None:
        clean = title.translate(_BIDI).strip()
        label = pseudo.text(clean, keep_lower)
        title = label if label != clean else pseudo.sender(title)
    pseudo.save()
    return PrivacyResult(out, pseudo.counts, regions[0] if regions else None, title, tuple(dict.fromkeys(regions)))
