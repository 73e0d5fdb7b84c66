"""The privacy pass: personal data becomes consistent placeholders before any text reaches a model.

Runs after `clean` inside `talkalike dataset` (on by default; `--no-privacy` turns it off). Try it with

    from talkalike.prepare.privacy import pseudonymise
    kept, counts = pseudonymise(messages, store, chat="Noa")   # counts: Counter({'PHONE': 3, 'EMAIL': 1, ...})

What is replaced, and how it is recognised (placeholders are numbered per kind, `[PHONE_1]`, `[PHONE_2]`, ...):
- PHONE: `phonenumbers.PhoneNumberMatcher` (valid numbers only) in international and national formats. National formats
  need a region: `PrivacyConfig.region`, else the most common region of the +CC numbers in the chat's own bodies and
  phone-number sender names (ties: the first seen), else the same vote over the whole store. With no +CC number
  anywhere there is no region, and only numbers written with +CC are found; pass `--region` then (the result's
  `region` says which one was used). The same number in any spelling is one placeholder (keyed by E.164).
  Sender names that are phone numbers become the same placeholders.
- EMAIL, URL (links that survived `clean`).
- CARD: 13-19 digit runs that pass the Luhn check (`stdnum.luhn`).
- IBAN: `stdnum.iban` validation (country format and mod-97 checksum).
- ID: national ID numbers only where the scheme has a checksum (`stdnum`): il.idnr (Teudat Zehut), es.dni,
  it.codicefiscale, de.idnr, fr.nir, br.cpf. us.ssn has no checksum, so it is left out to avoid false positives.
- NAME (only with `scrub_names`): the names of third parties, i.e. senders in the store (and `PrivacyConfig.names`) that
  are neither the persona nor a participant of the current chat; whole words, case-insensitive; a first name alone
  counts too.
The mapping original -> placeholder lives only in the local SQLite store (table `pii_map`), so re-running gives the same
placeholders; it never goes into a dataset. Cheap prefilters (a digit count, '@', '://') keep the pass fast: only
texts with 7+ digits meet the phone matcher.
"""

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import phonenumbers
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.de import idnr as de_idnr
from stdnum.es import dni
from stdnum.fr import nir
from stdnum.il import idnr as il_idnr
from stdnum.it import codicefiscale

from talkalike.message import Message
from talkalike.prepare.clean import LINK

PHONE, EMAIL, URL, CARD, IBAN, ID, NAME = "PHONE", "EMAIL", "URL", "CARD", "IBAN", "ID", "NAME"

PII_TABLE = """
CREATE TABLE IF NOT EXISTS pii_map (
    kind TEXT NOT NULL,         -- PHONE, EMAIL, URL, CARD, IBAN, ID, NAME
    original TEXT NOT NULL,     -- normalised: E.164 phone, lower-case e-mail or name, compact IBAN/card/ID
    placeholder TEXT NOT NULL,  -- [PHONE_1] ...
    PRIMARY KEY (kind, original)
)
"""

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_RE = re.compile(r"(?<![\d+])\d(?:[ -]?\d){12,18}(?!\d)")
IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# (pattern, checksum validators) for national IDs; a candidate is replaced when any validator accepts it.
ID_RULES = [
    (re.compile(r"(?<![\d+])\d{9}(?!\d)"), [il_idnr.is_valid]),
    (re.compile(r"(?<![\d+])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?!\d)"), [cpf.is_valid, de_idnr.is_valid]),
    (re.compile(r"(?<![\d+])\d{2} \d{3} \d{3} \d{3}(?!\d)"), [de_idnr.is_valid]),
    (re.compile(r"(?<![\d+])[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\d)"), [nir.is_valid]),
    (re.compile(r"(?<!\w)\d{8}-?[A-Za-z](?!\w)"), [dni.is_valid]),
    (re.compile(r"(?<!\w)[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z](?!\w)"), [codicefiscale.is_valid]),
]
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D+")
_PHONE_NAME = re.compile(r"^[+\d][\d\s().\-\u2011]{6,}$")  # a sender name that is a phone number
_BIDI = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"))


@dataclass(frozen=True)
class PrivacyConfig:
    """What the privacy pass replaces; works with no arguments."""

    enabled: bool = True  # personal data is pseudonymised before it reaches any model, unless switched off
    region: str | None = None  # phone region for national formats; None: inferred from the chat's own +CC numbers
    scrub_names: bool = False  # third-party names are also useful context; scrub them only on request
    names: tuple[str, ...] = ()  # extra third-party names to scrub (with scrub_names)


@dataclass(frozen=True)
class PrivacyResult:
    """Pseudonymised messages and replacements per kind; unpacks as `kept, counts = pseudonymise(...)`."""

    messages: list[Message]
    counts: Counter
    region: str | None = None  # the phone region used (given or inferred)
    title: str | None = None  # the `title` passed in, pseudonymised like a message

    def __iter__(self) -> Iterator:
        return iter((self.messages, self.counts))


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


def infer_region(messages: Iterable[Message]) -> str | None:
    """The most common region of +CC phone numbers in the bodies and sender names (first seen wins ties), else None."""
    regions = _regions(text for m in messages for text in (m.text, m.sender or ""))
    return regions.most_common(1)[0][0] if regions else None


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


@dataclass
class Pseudonymiser:
    """Replaces personal data with placeholders that stay the same across chats and runs (mapping in `pii_map`)."""

    connection: sqlite3.Connection | None = None  # the store's connection; None keeps the mapping in memory only
    region: str | None = None
    third_parties: Iterable[str] = ()  # names to scrub as NAME (empty: names are not scrubbed)
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._map: dict[tuple[str, str], str] = {}
        self._last: Counter = Counter()
        self._new: list[tuple[str, str, str]] = []
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
        if "@" in text:
            text = EMAIL_RE.sub(lambda m: self.placeholder(EMAIL, m.group().lower()), text)
        if "://" in text or "www." in text.lower():
            text = LINK.sub(lambda m: self.placeholder(URL, m.group()), text)
        digits = digit_count(text)
        if digits >= 9:
            text = IBAN_RE.sub(self._iban, text)
        if digits >= 13:
            text = CARD_RE.sub(self._card, text)
        if digits >= 7:
            text = self._phones(text)
        if digits >= 7:
            for pattern, validators in ID_RULES:
                text = pattern.sub(lambda m, v=validators: self._national_id(m, v), text)
        # One alternation regex stays at a few microseconds a text even with thousands of names (measured).
        if self._names_re is not None:
            keep = {k.lower() for k in keep_names}
            text = self._names_re.sub(lambda m: self._name(m, keep), text)
        return text

    def sender(self, name: str | None) -> str | None:
        """A phone-number sender name becomes its [PHONE_n]; other names stay (speaker names are needed in groups)."""
        if name is None or not phone_sender(name):
            return name
        clean = name.translate(_BIDI).strip()
        try:
            number = phonenumbers.parse(clean, self.region)
            key = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        except phonenumbers.NumberParseException:
            key = "+" + _NON_DIGIT.sub("", clean)  # unparseable, still a number: keep it out of the dataset
        return self.placeholder(PHONE, key)

    def _iban(self, match: re.Match) -> str:
        # The pattern may run into a following upper-case word; try shorter spans, group by group.
        words = match.group().split(" ")
        for end in range(len(words), 0, -1):
            candidate = " ".join(words[:end])
            if iban.is_valid(candidate):
                rest = match.group()[len(candidate):]
                return self.placeholder(IBAN, iban.compact(candidate)) + rest
        return match.group()

    def _card(self, match: re.Match) -> str:
        digits = _NON_DIGIT.sub("", match.group())
        return self.placeholder(CARD, digits) if luhn.is_valid(digits) else match.group()

    def _phones(self, text: str) -> str:
        out, last = [], 0
        for match in phonenumbers.PhoneNumberMatcher(text, self.region):
            key = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
            out += [text[last:match.start], self.placeholder(PHONE, key)]
            last = match.end
        return "".join(out) + text[last:] if out else text

    def _national_id(self, match: re.Match, validators: list) -> str:
        value = match.group()
        if any(valid(value) for valid in validators):
            return self.placeholder(ID, re.sub(r"[\s.\-]", "", value).upper())
        return value

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
    region = region or config.region or infer_region(messages)
    if region is None and connection is not None:
        region = infer_store_region(connection)
    participants = {m.sender for m in messages if m.sender is not None} | set(keep)
    third_parties: list[str] = []
    if config.scrub_names if scrub_names is None else scrub_names:
        if names is None and connection is not None:
            rows = connection.execute("SELECT DISTINCT sender FROM messages WHERE sender IS NOT NULL")
            names = [row[0] for row in rows]
        third_parties = [n for n in [*(names or ()), *config.names] if n not in participants]
    pseudo = Pseudonymiser(connection, region, third_parties)
    keep_lower = {word for name in participants for word in _name_forms(name)}
    out: list[Message] = []
    for m in messages:
        text = pseudo.text(m.text, keep_lower)
        sender = m.sender if m.sender in keep else pseudo.sender(m.sender)
        out.append(m if text == m.text and sender == m.sender else replace(m, text=text, sender=sender))
    if title is not None:
        title = pseudo.text(title, keep_lower)
    pseudo.save()
    return PrivacyResult(out, pseudo.counts, region, title)
