"""WhatsApp "Export chat" text -> `ParsedExport`, for Android and iOS exports in any phone locale.

How it reads a file:
1. The header shape (`[date, time] ` on iOS, `date, time - ` on Android, the old `date, time: `, `date time `, with
   `klo`/`à` words, dotted times, 12h clocks in their local spellings) is detected ONCE per file, by a vote over a
   sample of lines (`_detect`).
2. One regular expression specialised for that shape runs over the whole text; each match is a whole message: its
   header, its first line and its continuation lines. A header-shaped line is always a header, even when its time runs
   backwards (a transcript pasted into a message in the file's own format splits it; nothing is lost either way).
3. Dates and times are parsed once per distinct string. Day/month order comes from the file's own dates (a value above
   12 decides; else the order under which the dates run forward), a year-first date is always y/m/d, and the caller can
   force it (`date_order`).
4. Kinds (media, deleted, system) and the edited marker come from per-language tables in
   `talkalike/data/whatsapp_locales.json`.

Every input line lands in exactly one place: a message header, a continuation line of a message, or an `Unparsed`
entry. Try it: `talkalike parse 'WhatsApp Chat with Maya.txt' | head`.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import chain
from importlib import resources
from pathlib import PurePath

from talkalike.errors import TalkalikeError
from talkalike.message import Message, ParsedExport, Unparsed

# Invisible direction marks and the BOM: never part of structure, names or body edges.
MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_MC = "\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff"  # the same, as a regex class body
_S = "[ \u00a0\u202f]"  # a space in a timestamp; WhatsApp writes NBSP/NNBSP around AM/PM since about 2023
_DROP_MARKS = str.maketrans("", "", MARKS)
_SAMPLE_CHARS = 150_000  # detection reads this much from the head (and a quarter of it from the tail): ~2000 lines
ORDERS = {"dmy": "d/m/y", "mdy": "m/d/y", "ymd": "y/m/d"}


@dataclass(frozen=True)
class _Tables:
    exact: dict  # whole body -> kind
    media: re.Pattern
    deleted: re.Pattern
    strong: re.Pattern  # system notices nobody types
    weak: re.Pattern  # system notices a person could type; only for author-less or mark-opened bodies
    edited: tuple
    ampm: dict  # normalised spelling -> 0 (am) or 12 (pm)
    ampm_regex: str
    time_words: tuple
    filename_prefixes: tuple
    suffixes: tuple  # a body's first line ends with one of these -> it may be media or deleted: check it
    prefixes: tuple  # likewise for how a body starts


def _alternation(patterns: list[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns) or "(?!)"


@lru_cache(maxsize=1)
def tables() -> _Tables:
    """The locale tables, loaded once from talkalike/data/whatsapp_locales.json."""
    raw = json.loads(resources.files("talkalike").joinpath("data/whatsapp_locales.json").read_text("utf-8"))
    langs = raw["languages"].values()
    exact: dict[str, str] = {}
    for kind in ("system", "deleted", "media"):  # media wins on a clash, then deleted
        for lang in langs:
            for s in lang.get(f"{kind}_exact", []):
                exact[s] = kind
    joined = lambda key: [p for lang in langs for p in lang.get(key, [])]  # noqa: E731
    hinted = joined("media_patterns") + joined("deleted_patterns")
    ampm = {}
    for lang in langs:
        for offset, key in ((0, "am"), (12, "pm")):
            for s in lang.get(key, []):
                ampm[_norm_ampm(s)] = offset
    spellings = {s for lang in langs for key in ("am", "pm") for s in lang.get(key, [])}
    # latin a.m./p.m. in every spacing, then the local words; longest first so "p. m." wins over "p"
    local = sorted((s for s in spellings if not re.fullmatch(r"[apAP]\.? ?[mM]\.?", s)), key=len, reverse=True)
    local_re = [re.escape(s).replace(r"\ ", _S) for s in local]
    ampm_regex = "|".join([rf"[AaPp]\.?{_S}?[Mm]\.?"] + local_re)
    prefixes = []
    for lang in langs:
        for template in lang.get("filename", []):
            prefix = template.split("{name}")[0]
            prefixes += [prefix, prefix.replace(" ", "_")]
    return _Tables(
        exact=exact,
        # media/deleted placeholders decide from the first line; continuation lines (an Android caption) may follow
        media=re.compile(rf"(?:{_alternation(joined('media_patterns'))})(?:\n[\s\S]*)?\Z"),
        deleted=re.compile(_alternation(joined("deleted_patterns"))),
        strong=re.compile(_alternation(joined("system_strong"))),
        weak=re.compile(_alternation(joined("system_weak"))),
        edited=tuple(sorted({s for lang in langs for s in lang.get("edited", [])}, key=len, reverse=True)),
        ampm=ampm,
        ampm_regex=ampm_regex,
        time_words=tuple(sorted({w for lang in langs for w in lang.get("time_words", [])}, key=len, reverse=True)),
        filename_prefixes=tuple(sorted(set(prefixes), key=len, reverse=True)),
        suffixes=_minimal({">", ")"} | {s.rsplit(" ", 1)[-1] for k in ("media_exact", "deleted_exact")
                                        for s in joined(k)} | {_literal_ends(p)[1] for p in hinted}, str.endswith),
        prefixes=_minimal({_literal_ends(p)[0] for p in hinted}, str.startswith),
    )


def _minimal(hints: set[str], covers) -> tuple[str, ...]:
    """Drop hints that a shorter hint already covers: fewer strings to test on every body."""
    hints = sorted(hints - {""}, key=len)
    kept: list[str] = []
    for h in hints:
        if not any(covers(h, k) for k in kept):
            kept.append(h)
    return tuple(kept)


def _literal_ends(pattern: str) -> tuple[str, str]:
    """The literal text a regex must start and end with ("" where it has none), for a cheap first check."""
    tokens = []  # (char, is_literal)
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            tokens.append((nxt, not nxt.isalnum()))
            i += 2
            continue
        if c in "?*+{" and tokens:
            tokens[-1] = (tokens[-1][0], False)  # a quantified character is optional
        tokens.append((c, c not in ".^$*+?{}[]|()"))
        i += 1
    def run(seq):
        out = []
        for ch, literal in seq:
            if not literal:
                break
            out.append(ch)
        return "".join(out)
    return run(tokens), run(reversed(tokens))[::-1]


def _norm_ampm(s: str) -> str:
    return re.sub(r"[\s.\u00a0\u202f]", "", s).lower()


# ---------------------------------------------------------------------------------------------------------------
# Format detection


@dataclass(frozen=True)
class Shape:
    """The header grammar of one file, as voted from its lines."""

    bracket: bool  # iOS `[date, time] `
    date_sep: str  # / . -
    year_first: bool
    date_dot: bool  # `13. 6. 2018.`
    word: str  # `klo`, `à`, ... between date and time, else ""
    time_sep: str  # : or .
    twelve_hour: bool
    time_dot: bool  # `13:34. - `
    close: str  # "]" (iOS), "-" (Android), ":" (legacy), " " (nothing)

    def describe(self, order: str) -> str:
        """The shape in words, for the import report."""
        platform = {"]": "ios", "-": "android", ":": "legacy (colon after the time)", " ": "plain (no separator)"}
        parts = [platform[self.close], ORDERS[order] + (f" with '{self.date_sep}'" if self.date_sep != "/" else "")]
        parts.append("12h" if self.twelve_hour else "24h")
        if self.time_sep == ".":
            parts.append("dotted time")
        if self.word:
            parts.append(f"'{self.word}' before the time")
        if self.time_dot:
            parts.append("dot after the time")
        return ", ".join(parts)


@lru_cache(maxsize=1)
def _probe() -> re.Pattern:
    words = "|".join(re.escape(w) for w in tables().time_words)
    return re.compile(
        rf"[{_MC}]*(?P<open>\[)?"
        rf"(?P<d1>\d{{1,4}})(?P<ds>[./-]){_S}?(?P<d2>\d{{1,2}})(?P=ds){_S}?(?P<d3>\d{{1,4}})(?P<ddot>\.)?"
        rf",?{_S}(?:(?P<word>{words}){_S})?"
        rf"(?P<h>\d{{1,2}})(?P<ts>[:.])\d{{2}}(?:(?P=ts)\d{{2}})?"
        rf"(?:{_S}?(?P<ampm>{tables().ampm_regex}))?(?P<tdot>\.)?"
        rf"(?(open)\]{_S}|(?P<close>{_S}-{_S}|:{_S}|{_S}))"
    )


def _sample_lines(text: str) -> list[str]:
    lines = text[:_SAMPLE_CHARS].split("\n")
    if len(text) > _SAMPLE_CHARS:
        lines = lines[:-1] + text[-_SAMPLE_CHARS // 4:].split("\n")[1:]
    return lines


def _detect(text: str) -> tuple[Shape, list[tuple[int, int, int]], int, bool]:
    """The header shape by majority vote, the sample's (d1, d2, d3) dates, lines in other shapes, and whether
    bodies are opened with U+200E (modern iOS marks its media and system lines so)."""
    probe = _probe().match
    votes: Counter = Counter()
    marked = False
    dates: dict[tuple, list] = {}
    for line in _sample_lines(text):
        m = probe(line)
        if m is None:
            continue
        open_, d1, ds, d2, d3, ddot, word, _, ts, ampm, tdot, close = m.groups()
        key = (open_ is not None, ds, len(d1) == 4, ddot is not None, word or "", ts, ampm is not None,
               tdot is not None, "]" if close is None else close.strip(" \u00a0\u202f") or " ")
        votes[key] += 1
        marked = marked or ": \u200e" in line
        dates.setdefault(key, []).append((int(d1), int(d2), int(d3)))
    if not votes:
        raise _NoHeader
    key, count = votes.most_common(1)[0]
    return Shape(*key), dates[key], sum(votes.values()) - count, marked


def _header_regex(shape: Shape, leading_newline: bool) -> re.Pattern:
    """One regex for the file's headers: groups date, time, author (None when there is none) and the first line."""
    ds, ts = re.escape(shape.date_sep), re.escape(shape.time_sep)
    if shape.year_first:
        date = rf"\d{{4}}{ds}{_S}?\d{{1,2}}{ds}{_S}?\d{{1,2}}"
    else:
        date = rf"\d{{1,2}}{ds}{_S}?\d{{1,2}}{ds}{_S}?(?:\d{{4}}|\d{{2}})"
    if shape.date_dot:
        date += r"\."
    mid = rf",?{_S}" + (re.escape(shape.word).replace(r"\ ", _S) + _S if shape.word else "")
    time = rf"\d{{1,2}}{ts}\d{{2}}(?:{ts}\d{{2}})?"
    if shape.twelve_hour:
        time += rf"{_S}?(?:{tables().ampm_regex})"
    close = {"]": rf"\]{_S}", "-": rf"{_S}-{_S}", ":": rf":{_S}", " ": _S}[shape.close]
    tail = (r"\." if shape.time_dot else "") + close
    opener = rf"[{_MC}]*" + (r"\[" if shape.bracket else "")
    # the author runs to the first ": " of the line; a line without one has no author
    author = r"(?:([^\n:]*(?::(?! )[^\n:]*)*): )?"
    pattern = f"{opener}({date}){mid}({time}){tail}{author}([^\\n]*)"
    return re.compile(("\\n" if leading_newline else "") + pattern)


class _End:
    """A stand-in match after the last header, so the loop below finishes the last message like any other."""

    def __init__(self, at: int):
        self.at = at

    def start(self) -> int:
        return self.at

    end = start

    def groups(self) -> tuple:
        return None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# Dates, times, names, kinds


_NUMBER = re.compile(r"\d+")
_TIME = re.compile(r"(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(.*)", re.S)


class _Clock:
    """Turns date and time strings into datetimes, once per distinct string, and keeps day/month evidence."""

    def __init__(self, order: str, ampm: dict):
        self.order = order
        self.ampm = dict(ampm)  # also remembers each raw spelling met
        self.days: dict[str, datetime | None] = {}
        self.times: dict[str, timedelta] = {}
        self.first_over_12 = self.second_over_12 = False

    def day(self, s: str) -> datetime | None:
        a, b, c = map(int, _NUMBER.findall(s))
        self.first_over_12 |= a > 12
        self.second_over_12 |= b > 12
        y, m, d = (a, b, c) if self.order == "ymd" else (c, b, a) if self.order == "dmy" else (c, a, b)
        if y < 100:
            y += 2000  # WhatsApp exists since 2009
        try:
            value = datetime(y, m, d)
        except ValueError:
            value = None
        self.days[s] = value
        return value

    def time(self, s: str) -> timedelta:
        hh, mm, ss, suffix = _TIME.match(s).groups()
        h, mi, sec = int(hh), int(mm), int(ss or 0)
        if suffix:
            try:
                offset = self.ampm[suffix]
            except KeyError:
                offset = self.ampm[suffix] = self.ampm.get(_norm_ampm(suffix), 0)
            if h == 12:
                h = offset  # 12 AM is midnight, 12 PM noon
            elif h < 12:
                h += offset  # an impossible "13:37 p.m." keeps its 13
        value = self.times[s] = timedelta(0, h * 3600 + mi * 60 + sec)
        return value


def clean_name(raw: str) -> str:
    """A sender as the person is known: no invisible marks, no `~ ` prefix of non-contacts, plain hyphens and spaces."""
    name = raw.translate(_DROP_MARKS).replace("\u2011", "-").replace("\u00a0", " ").replace("\u202f", " ").strip()
    if name.startswith("~") and len(name) > 1:
        name = name[1:].lstrip()
    return name or raw


def classify(body: str, authored: bool = True, opened_with_mark: bool = False) -> str:
    """The kind of a body whose edges are already clean: text, media, deleted or system."""
    t = tables()
    kind = t.exact.get(body)
    if kind is not None:
        return kind
    if "\u200e" in body or "\u200f" in body or "\u202a" in body or "\u202c" in body:
        body = body.translate(_DROP_MARKS)
        kind = t.exact.get(body)
        if kind is not None:
            return kind
    if t.media.match(body):
        return "media"
    if t.deleted.fullmatch(body):
        return "deleted"
    if t.strong.fullmatch(body):
        return "system"
    if (not authored or opened_with_mark) and t.weak.fullmatch(body):
        return "system"
    return "text" if authored else "system"


def _unedit(body: str) -> tuple[str, bool]:
    """The body without its edited marker, and whether it had one."""
    if body.endswith(">"):
        for marker in tables().edited:
            if body.endswith(marker):
                body = body[: -len(marker)].rstrip(MARKS)
                if body.endswith(" "):
                    body = body[:-1]
                return body.rstrip(MARKS), True
    return body, False


def _system_line(raw: str, rest: str) -> bool:
    # An Android system line with ": " in it ("... in the community: X", a subject "Trip: Eilat") looks authored;
    # real names are short and unquoted, so only long or quoted "names" come here.
    return tables().strong.fullmatch((raw + ": " + rest).translate(_DROP_MARKS)) is not None


def _suspicious(raw: str) -> bool:
    return len(raw) > 24 or any(q in raw for q in "\"“”«»„")


# ---------------------------------------------------------------------------------------------------------------
# Parse


def _order_from(dates: list[tuple[int, int, int]]) -> tuple[str | None, str]:
    """dmy or mdy from (d1, d2, d3) triples when a value above 12 decides, else None and the chronology's pick."""
    first = any(a > 12 for a, _, _ in dates)
    second = any(b > 12 for _, b, _ in dates)
    if first != second:
        return ("dmy" if first else "mdy"), ""
    return None, _chronological([(a, b, c) for a, b, c in dates])


def _chronological(dates: list[tuple[int, int, int]]) -> str:
    """The order under which the dates, in file order, step backwards least often (ties: d/m/y, the commoner)."""
    def backsteps(order: str) -> int:
        keys = [(c, b, a) if order == "dmy" else (c, a, b) for a, b, c in dates]
        return sum(1 for x, y in zip(keys, keys[1:]) if y < x)
    return "mdy" if backsteps("mdy") < backsteps("dmy") else "dmy"


def parse(text: str, name: str, date_order: str | None = None) -> ParsedExport:
    """Parse the text of a WhatsApp chat export; `date_order` ("dmy", "mdy", "ymd") overrides the inferred order."""
    if "\x00" in text:
        raise TalkalikeError(f"{name} holds binary data, not a WhatsApp chat export; give the .txt or .zip from 'Export chat'.")
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]  # the final newline ends the last line; it does not start an empty one
    if not text.strip():
        raise TalkalikeError(f"{name} is empty; export the chat again with 'Export chat' and give that file.")
    try:
        return _parse(text, name, date_order)
    except _NoHeader:
        raise TalkalikeError(f"{name} is not a WhatsApp chat export: no line starts with a message date and time "
                             "like '30/12/2020, 13:00 - ' or '[30/12/2020, 13:00:00] '.") from None


class _NoHeader(Exception):
    """No line of the text is a message header."""


def _parse(text: str, name: str, date_order: str | None) -> ParsedExport:
    shape, sample_dates, other, marked = _detect(text)
    notes = []
    if date_order is not None:
        order = date_order.replace("/", "").lower()
        if order not in ORDERS:
            raise TalkalikeError(f"unknown date order {date_order!r}; use one of {', '.join(ORDERS)}.")
        decided = True
    elif shape.year_first:
        order, decided = "ymd", True
    else:
        sure, guess = _order_from(sample_dates)
        order, decided = sure or guess, sure is not None
    messages, unparsed, clock = _parse_with(text, shape, order, marked)
    if not decided:
        # The sample could not decide: the whole file's distinct dates can.
        triples = [tuple(int(x) for x in re.findall(r"\d+", s)) for s in clock.days]
        sure, guess = _order_from(triples)
        best = sure or guess
        if best != order:
            order = best
            messages, unparsed, clock = _parse_with(text, shape, order, marked)
        if sure is None:
            other_order = "mdy" if order == "dmy" else "dmy"
            notes.append(f"Day and month order is ambiguous (no date has a day above 12): read as {ORDERS[order]}, "
                         f"under which the dates run forward; pass --date-order {other_order} if that is wrong.")
    if other:
        notes.append(f"{other} sampled lines look like message headers of another shape than this file's "
                     f"({shape.describe(order)}); they were kept as message text.")
    return ParsedExport(name=name, source="whatsapp", format=shape.describe(order), messages=messages,
                        unparsed=unparsed, notes=notes)


def _parse_with(text: str, shape: Shape, order: str, marked: bool) -> tuple[list[Message], list[Unparsed], "_Clock"]:
    """One pass over the text; `marked`: the file opens system bodies with U+200E, so only those can be system."""
    t = tables()
    clock = _Clock(order, t.ampm)
    days, times, names, suspicious = clock.days, clock.times, {}, set()
    exact = t.exact
    suffixes, prefixes = t.suffixes, t.prefixes
    check_all = shape.close == "]" and not marked  # an old iOS export: any authored body may be a system line
    messages: list[Message] = []
    append = messages.append
    bad: list[tuple[int, int, str]] = []  # (start, end, reason) of headers whose date does not exist

    first = _header_regex(shape, leading_newline=False).match(text)
    matches = _header_regex(shape, leading_newline=True).finditer(text, first.end() if first else 0)
    matches = chain((first,) if first else (), matches, (_End(len(text)),))
    head_end = None  # where the first message starts; lines before it are unparsed
    d = None
    for m in matches:
        s = m.start()
        if d is None:
            head_end = s
        else:  # finish the previous message: its continuation lines run up to this header
            cont = text[e:s]
            try:
                day = days[d]
            except KeyError:
                day = clock.day(d)
            try:
                delta = times[tm]
            except KeyError:
                delta = clock.time(tm)
            if raw:
                try:
                    sender = names[raw]
                except KeyError:
                    sender = names[raw] = clean_name(raw)
                    if _suspicious(raw):
                        suspicious.add(raw)
                if raw in suspicious and _system_line(raw, b):
                    sender, b = None, raw + ": " + b  # an author-less notice with ": " in it
            elif b.endswith(":") and len(b) > 1:
                sender, b = clean_name(b[:-1]), ""  # an empty body ("Amazon EG:")
            elif b.endswith(":.") and len(b) > 2:
                sender, b = clean_name(b[:-2]), "."  # the disappearing-message shape "Name:."
            else:
                sender = None
            body = b + cont
            stripped = body.strip(MARKS)
            if (sender is None or stripped is not body or check_all or b.endswith(suffixes)
                    or body.startswith(prefixes) or "maps.google" in body or (cont and body.endswith(suffixes))):
                opened = stripped is not body and body[0] in MARKS
                stripped, edited = _unedit(stripped)
                kind = exact.get(stripped) or classify(stripped, sender is not None, opened)
                if kind == "system":
                    sender = None  # the same event reads the same from Android (no author) and iOS (group or actor)
            else:
                kind, edited = "text", False
            if day is None:
                bad.append((p, s, f"the date {d!r} does not exist read as {ORDERS[order]}"))
            else:
                append(Message(day + delta, sender, stripped, kind, edited))
        d, tm, raw, b = m.groups()
        p, e = s, m.end()

    if head_end == len(text):
        raise _NoHeader
    unparsed = [Unparsed(no, line, "before the first message header")
                for no, line in enumerate(text[:head_end].split("\n"), 1)] if head_end else []
    if bad:
        line_no, pos = 1, 0
        for start, end, reason in bad:
            line_no += text.count("\n", pos, start)
            pos = start
            lines = text[start:end].split("\n")
            skip = 1 if lines[0] == "" else 0  # the match began at the newline that ends the line before
            for k, line in enumerate(lines[skip:]):
                unparsed.append(Unparsed(line_no + skip + k, line, reason if k == 0 else "continues an unparsed line"))
        unparsed.sort(key=lambda u: u.line_no)
    return messages, unparsed, clock


def chat_name_from_filename(filename: str) -> str:
    """The chat's name from the export's file name: 'WhatsApp Chat with Maya.txt' -> 'Maya', in any language."""
    stem = PurePath(filename).name
    if stem.lower().endswith((".txt", ".zip")):
        stem = stem[:-4]
    stem = re.sub(r" ?\(\d+\)$", "", stem)  # a second download of the same file: "... (1).txt"
    for prefix in tables().filename_prefixes:
        if stem.casefold().startswith(prefix.casefold()) and len(stem) > len(prefix):
            return stem[len(prefix):].replace("_", " ").strip()
    return stem


# ---------------------------------------------------------------------------------------------------------------
# Render: the inverse of parse, for the property test and the benchmark's generator


@dataclass(frozen=True)
class Style:
    """How one phone writes its export: a header template and its 12h spellings."""

    template: str  # str.format fields: d m Y y H h M S P (see render)
    order: str  # the date order the template writes, to pass back to parse
    seconds: bool  # False: the export has minute precision, so seconds must be 0 to round-trip
    am: str = "AM"
    pm: str = "PM"
    ios: bool = False  # iOS opens media and system bodies, and media lines, with U+200E


STYLES = {
    "android": Style("{d:02}/{m:02}/{Y}, {H:02}:{M:02} - ", "dmy", False),  # en-GB, he-IL shape
    "android12": Style("{m}/{d}/{y:02}, {h}:{M:02}\u202f{P} - ", "mdy", False),  # en-US since 2023
    "android_es12": Style("{d}/{m}/{Y}, {h}:{M:02}\u00a0{P} - ", "dmy", False, "a.\u00a0m.", "p.\u00a0m."),
    "ios": Style("[{d}.{m}.{Y}, {H:02}:{M:02}:{S:02}] ", "dmy", True, ios=True),  # de, he
    "ios12": Style("[{m}/{d}/{y:02}, {h}:{M:02}:{S:02}\u202f{P}] ", "mdy", True, ios=True),
    "iso": Style("{Y}-{m:02}-{d:02} {H:02}:{M:02} - ", "ymd", False),  # sv-FI
    "legacy": Style("{d}/{m}/{y:02}, {H:02}:{M:02}:{S:02}: ", "dmy", True),
    "klo": Style("{d}.{m}.{Y} klo {H}.{M:02}.{S:02} - ", "dmy", True),
}


def render(messages: list[Message], style: str = "android") -> str:
    """An export text in `style` (a key of STYLES) that parses back to `messages`."""
    st = STYLES[style]
    fmt = st.template.format
    lines = []
    edited_marker = "<This message was edited>"
    for msg in messages:
        t = msg.time
        header = fmt(d=t.day, m=t.month, Y=t.year, y=t.year % 100, H=t.hour, h=t.hour % 12 or 12, M=t.minute,
                     S=t.second, P=st.am if t.hour < 12 else st.pm)
        body = msg.text + (" " + edited_marker if msg.edited else "")
        if st.ios and msg.kind != "text":
            body = "\u200e" + body
            if msg.kind == "media":
                header = "\u200e" + header
        if msg.sender is None:
            lines.append(header + body)
        else:
            sender = msg.sender
            if not st.ios and re.fullmatch(r"\+[\d ()-]+", sender):
                sender = f"\u202a{sender}\u202c"  # how Android wraps a number that is not in the contacts
            lines.append(f"{header}{sender}: {body}")
    return "\n".join(lines) + "\n"
