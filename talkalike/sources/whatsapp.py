"""WhatsApp "Export chat" text -> `ParsedExport`, for Android and iOS exports in any phone locale.

How it reads a file:
1. The header shape (`[date, time] ` on iOS, `date, time - ` on Android, the old `date, time: `, `date time `, with
   `klo`/`à` words, dotted times, 12h clocks in their local spellings) is detected ONCE per file, by a vote over a
   sample of lines (`_detect`).
2. One regular expression specialised for that shape splits the whole text (in chunks) at the headers; what lies
   between two headers is the first message's continuation lines. A header-shaped line is always a header, even when
   its time runs backwards (a transcript pasted into a message in the file's own format splits it; nothing is lost
   either way). Lines in another shape than the file's stay as message text, and a note counts them.
3. Dates and times are parsed once per distinct string. Day/month order comes from the file's own dates (a value above
   12 decides; else the order under which the dates run forward), a year-first date is always y/m/d, and the caller can
   force it (`date_order`).
4. Kinds (media, deleted, system) and the edited marker come from per-language tables in
   `talkalike/data/whatsapp_locales.json`.
5. Steps 2 and 3 run in C (`_whatsapp_scan.c`, built by `pip install -e .`): it recognises the same headers line by
   line and builds the plain entries; the rest (author-less, placeholders, edited, marks at a body's edge, dates that
   do not exist) come back to `_finish` here. Without a C compiler the pure-Python pass (`_split`) gives the same
   result, about 3x slower, and says nothing: tests/sources/test_whatsapp_scan.py fails where the extension is not
   built, so development and CI always test the C pass, and checks that both passes agree on every fixture and random
   export.

Every input line lands in exactly one place: a message header, a continuation line of a message, or an `Unparsed`
entry. Try it: `talkalike parse 'WhatsApp Chat with Maya.txt' | head`.
"""

import gc
import re
from collections import Counter, deque
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import count, pairwise, repeat
from operator import add
from pathlib import PurePath

from talkalike.errors import TalkalikeError
from talkalike.message import Message, ParsedExport, Unparsed

try:  # the hot loop in C, built at install; without a compiler the pure-Python pass gives the same result, slower
    from talkalike.sources import _whatsapp_scan
except ImportError:  # tests/sources/test_whatsapp_scan.py fails where the extension is missing, so CI always tests it
    _whatsapp_scan = None
from talkalike.sources.whatsapp_kinds import (
    MARKS,
    SPACE,
    classify,
    clean_name,
    is_suspicious_author,
    is_system_line,
    norm_ampm,
    tables,
    unedit,
)

_MC = "\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff"  # MARKS as a regex class body
_SAMPLE_CHARS = 150_000  # detection reads this much from the head (and a quarter of it from the tail): ~2000 lines
ORDERS = {"dmy": "d/m/y", "mdy": "m/d/y", "ymd": "y/m/d"}
_VISIBLE = re.compile(r"\S")
_SENTENCE = re.compile(r"[?!,;:\n]")  # what a typed sentence has and a group notice does not


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
    ampm_first: bool = False  # the 12h mark comes before the time, as in Chinese and Korean (`下午4:13`, `오후 4:13`)

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
        if self.ampm_first:
            parts.append("12h mark before the time")
        return ", ".join(parts)


@lru_cache(maxsize=1)
def _probe() -> re.Pattern:
    words = "|".join(re.escape(w) for w in tables().time_words)
    return re.compile(
        rf"[{_MC}]*(?P<open>\[)?"
        rf"(?P<d1>\d{{1,4}})(?P<ds>[./-]){SPACE}?(?P<d2>\d{{1,2}})(?P=ds){SPACE}?(?P<d3>\d{{1,4}})(?P<ddot>\.)?"
        rf",?{SPACE}(?:(?P<word>{words}){SPACE})?(?:(?P<pre>{tables().ampm_regex}){SPACE}?)?"
        rf"(?P<h>\d{{1,2}})(?P<ts>[:.])\d{{2}}(?:(?P=ts)\d{{2}})?"
        rf"(?:{SPACE}?(?P<ampm>{tables().ampm_regex}))?(?P<tdot>\.)?"
        rf"(?(open)\]{SPACE}|(?P<close>{SPACE}-{SPACE}|:{SPACE}|{SPACE}))"
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
        open_, d1, ds, d2, d3, ddot, word, pre, _, ts, ampm, tdot, close = m.groups()
        key = (open_ is not None, ds, len(d1) == 4, ddot is not None, word or "", ts, ampm is not None or pre is not None,
               tdot is not None, "]" if close is None else close.strip(" \u00a0\u202f") or " ", pre is not None)
        votes[key] += 1
        marked = marked or ": \u200e" in line
        dates.setdefault(key, []).append((int(d1), int(d2), int(d3)))
    if not votes:
        raise _NoHeader
    key, majority = votes.most_common(1)[0]
    return Shape(*key), dates[key], sum(votes.values()) - majority, marked


def _header_regex(shape: Shape, leading_newline: bool) -> re.Pattern:
    """One regex for the file's headers. Groups: date, time, author (None when there is none), a start flag, the first
    line, an end flag (see `_entries`)."""
    ds, ts = re.escape(shape.date_sep), re.escape(shape.time_sep)
    if shape.year_first:
        date = rf"\d{{4}}{ds}{SPACE}?\d{{1,2}}{ds}{SPACE}?\d{{1,2}}"
    else:
        date = rf"\d{{1,2}}{ds}{SPACE}?\d{{1,2}}{ds}{SPACE}?(?:\d{{4}}|\d{{2}})"
    if shape.date_dot:
        date += r"\."
    mid = rf",?{SPACE}" + (re.escape(shape.word).replace(r"\ ", SPACE) + SPACE if shape.word else "")
    time = rf"\d{{1,2}}{ts}\d{{2}}(?:{ts}\d{{2}})?"
    if shape.ampm_first:
        time = rf"(?:{tables().ampm_regex}){SPACE}?" + time
    elif shape.twelve_hour:
        time += rf"{SPACE}?(?:{tables().ampm_regex})"
    close = {"]": rf"\]{SPACE}", "-": rf"{SPACE}-{SPACE}", ":": rf":{SPACE}", " ": SPACE}[shape.close]
    tail = (r"\." if shape.time_dot else "") + close
    opener = rf"[{_MC}]*" + (r"\[" if shape.bracket else "")
    # the author runs to the first ": " of the line; a line without one has no author
    author = r"(?:([^\n:]*(?::(?! )[^\n:]*)*): )?"
    # Two empty groups flag first lines that may be placeholders (media, deleted): plain text then costs nothing more.
    t = tables()
    pattern = f"{opener}({date}){mid}({time}){tail}{author}({t.flag_start})?([^\\n]*)({t.flag_end})?"
    return re.compile(("\\n" if leading_newline else "") + pattern)


# ---------------------------------------------------------------------------------------------------------------
# Dates, times, names, kinds


_NUMBER = re.compile(r"\d+")
_TIME = re.compile(r"(\D*?)(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(.*)", re.S)  # [mark] h:mm[:ss] [mark]


class _Clock:
    """Turns date and time strings into datetimes, once per distinct string, and keeps day/month evidence."""

    def __init__(self, order: str, ampm: dict):
        self.order = order
        self.ampm = dict(ampm)  # also remembers each raw spelling met
        self.days: dict[str, datetime | None] = _Memo(self.day)
        self.times: dict[str, timedelta | None] = _Memo(self.time)

    def day(self, s: str) -> datetime | None:
        a, b, c = map(int, _NUMBER.findall(s))  # \d also reads Arabic-Indic digits
        y, m, d = (a, b, c) if self.order == "ymd" else (c, b, a) if self.order == "dmy" else (c, a, b)
        if y < 100:
            y += 2000  # WhatsApp exists since 2009
        try:
            return datetime(y, m, d)
        except ValueError:
            return None

    def time(self, s: str) -> timedelta | None:
        """The time of day, or None for one that does not exist (24:00, 23:61): its lines are reported as unparsed
        rather than rolled over into the next day."""
        prefix, hh, mm, ss, suffix = _TIME.match(s).groups()
        h, mi, sec = int(hh), int(mm), int(ss or 0)
        suffix = suffix or prefix
        if suffix:
            offset = self.offset(suffix)
            if h == 12:
                h = offset  # 12 AM is midnight, 12 PM noon
            elif h < 12:
                h += offset  # an impossible "13:37 p.m." keeps its 13
        if h > 23 or mi > 59 or sec > 59:
            return None
        return timedelta(0, h * 3600 + mi * 60 + sec)

    def offset(self, mark: str) -> int:
        """0 or 12 (hours) for a 12h mark as the file writes it ("\u202fPM", " p. m.", "下午")."""
        try:
            return self.ampm[mark]
        except KeyError:
            offset = self.ampm[mark] = self.ampm.get(norm_ampm(mark), 0)
            return offset


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
        return sum(1 for x, y in pairwise(keys) if y < x)
    return "mdy" if backsteps("mdy") < backsteps("dmy") else "dmy"


def parse(text: str, name: str, date_order: str | None = None) -> ParsedExport:
    """Parse the text of a WhatsApp chat export; `date_order` ("dmy", "mdy", "ymd") overrides the inferred order."""
    if "\x00" in text:
        raise TalkalikeError(f"{name} holds binary data, not a WhatsApp chat export; give the .txt or .zip from 'Export chat'.")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.count("\r") > text.count("\n"):  # old Mac line ends (CR alone): a lone CR in a body stays as it is
            text = text.replace("\r", "\n")
    # Offsets instead of slices: a copy of a large export would double the peak memory.
    start = 1 if text.startswith("\ufeff") else 0
    end = len(text) - 1 if text.endswith("\n") else len(text)  # the final newline ends the last line
    if _VISIBLE.search(text, start, end) is None:
        raise TalkalikeError(f"{name} is empty; export the chat again with 'Export chat' and give that file.")
    collecting = gc.isenabled()
    gc.disable()  # a million new messages hold no reference cycles; the collector would only rescan them, again and again
    try:
        return _parse(text, start, end, name, date_order)
    except _NoHeader:
        raise TalkalikeError(f"{name} is not a WhatsApp chat export: no line starts with a message date and time "
                             "like '30/12/2020, 13:00 - ' or '[30/12/2020, 13:00:00] '.") from None
    finally:
        if collecting:
            gc.enable()


class _NoHeader(Exception):
    """No line of the text is a message header."""


def _parse(text: str, start: int, end: int, name: str, date_order: str | None) -> ParsedExport:
    shape, sample_dates, other, marked = _detect(text)
    notes = []
    if date_order is not None:
        order = date_order.replace("/", "").lower()
        if order not in ORDERS:
            raise TalkalikeError(f"unknown date order {date_order!r}; use one of {', '.join(ORDERS)}.")
        if (order == "ymd") != shape.year_first:
            raise TalkalikeError(f"--date-order {order} does not fit {name}: its dates "
                                 f"{'start' if shape.year_first else 'do not start'} with the year.")
        decided = True
    elif shape.year_first:
        order, decided = "ymd", True
    else:
        sure, guess = _order_from(sample_dates)
        order, decided = sure or guess, sure is not None
    messages, unparsed, clock = _parse_with(text, start, end, shape, order, marked)
    known = decided
    if not decided:
        # The sample could not decide: the whole file's distinct dates can.
        triples = [tuple(int(x) for x in re.findall(r"\d+", s)) for s in clock.days]
        sure, guess = _order_from(triples)
        best = sure or guess
        if best != order:
            order = best
            messages, unparsed, clock = _parse_with(text, start, end, shape, order, marked)
        known = sure is not None
        if sure is None:
            other_order = "mdy" if order == "dmy" else "dmy"
            notes.append(f"Day and month order is ambiguous (no date has a day above 12): read as {ORDERS[order]}, "
                         f"under which the dates run forward; pass --date-order {other_order} if that is wrong.")
    if other:
        notes.append(f"{other} sampled lines look like message headers of another shape than this file's "
                     f"({shape.describe(order)}); they were kept as message text.")
    return ParsedExport(name=name, source="whatsapp", format=shape.describe(order), messages=messages,
                        unparsed=unparsed, notes=notes, date_order=order, order_known=known)


_CHUNK = 1 << 20  # characters split at once: big enough to amortise, small enough to keep the peak memory flat
_SUSPECT = object()  # the names memo's answer for an author field that may be a system line's first words


class _Memo(dict):
    """A dict that computes each missing value once; map() over its __getitem__ then runs in C."""

    def __init__(self, compute):
        super().__init__()
        self.compute = compute

    def __missing__(self, key):
        value = self[key] = self.compute(key)
        return value


def _name(raw: str | None) -> object:
    if raw is None:
        return None
    return _SUSPECT if is_suspicious_author(raw) else clean_name(raw)


def _parse_with(text: str, start: int, end: int, shape: Shape, order: str,
                marked: bool) -> tuple[list[Message], list[Unparsed], "_Clock"]:
    """One pass over text[start:end]; `marked`: the file opens system bodies with U+200E, so only those can be system."""
    clock = _Clock(order, tables().ampm)
    names = _Memo(_name)
    check_all = shape.close == "]" and not marked  # an old iOS export: any authored body may be a system line
    bad: set[str] = set()  # date strings that do not exist under `order`
    bad_times: set[str] = set()  # time strings that do not exist (24:00, 23:61)
    header = _header_regex(shape, leading_newline=True)
    if _whatsapp_scan is not None and not check_all:
        first, messages = _scan_fast(text, start, end, shape, clock, names, bad, bad_times)
        head_text = "\n" + text[start:first - 1] if first > start else ""
    else:
        messages, head_text = _split(text, start, end, header, clock, names, check_all, bad, bad_times)
    if shape.bracket:
        _attributed_notices(messages)
    unparsed = [Unparsed(no, line, "before the first message header")
                for no, line in enumerate(head_text[1:].split("\n"), 1)] if head_text else []
    if bad or bad_times:
        unparsed += _bad_dates(text, start, end, header, bad, bad_times, order)
        unparsed.sort(key=lambda u: u.line_no)
    return messages, unparsed, clock


def _attributed_notices(messages: list[Message]) -> None:
    """iOS writes some group events under the actor's own name and without a mark (`Dana: Dana changed the subject
    from "plans" to "Trip: Eilat"`): a text that starts with its sender's name and reads as a notice is one. People
    rarely write their own name in the third person, so the name prefix keeps "Dana: I added Maya" a message; the
    looser notices ("Dana added Maya", "Noa left") count only without the punctuation of a sentence."""
    t = tables()
    strong, weak = t.strong.fullmatch, t.weak.fullmatch
    for i, m in enumerate(messages):
        if m.kind == "text" and m.sender and m.text.startswith(m.sender + " ") and (
                strong(m.text) or weak(m.text) and _SENTENCE.search(m.text) is None):
            messages[i] = Message(m.time, None, m.text, "system", m.edited)


def _split(text: str, start: int, end: int, header: re.Pattern, clock: "_Clock", names: _Memo, check_all: bool,
           bad: set, bad_times: set) -> tuple[list[Message], str]:
    """The pure-Python pass: the messages, and the text before the first header ("\n" + it, or "" when none)."""
    split, search = header.split, header.search
    messages: list[Message] = []
    head: list[str] = []  # "\n" + the lines before the first header, or nothing when the text opens with a header
    seen = False
    pos = start
    while pos < end:
        stop = pos + _CHUNK
        if stop >= end:
            stop = end
        else:  # cut the text just before a header, so no message straddles two chunks
            m = search(text, stop, end)
            stop = m.start() if m else end
        # Each header is preceded by "\n"; so is the very first line, for the split's sake.
        parts = split("\n" + text[pos:stop] if pos == start else text[pos:stop])
        if not seen:
            head.append(parts[0])
            seen = len(parts) > 1
        if len(parts) > 1:
            messages += _entries(parts, clock, names, check_all, bad, bad_times)
        pos = stop
    if not seen:
        raise _NoHeader
    return messages, "".join(head)


def _scan_fast(text: str, start: int, end: int, shape: Shape, clock: "_Clock", names: _Memo,
               bad: set, bad_times: set) -> tuple[int, list[Message]]:
    """The same pass through the C scanner: the offset of the first header line, and the messages. The scanner builds
    the plain entries; the rest come back with their parts and get `_finish`, the closer look `_entries` gives them."""
    t = tables()
    first, messages, closer = _whatsapp_scan.scan(
        text, start, end, (shape.bracket, shape.date_sep, shape.year_first, shape.date_dot, shape.word, shape.time_sep,
                           shape.twelve_hour, shape.ampm_first, shape.time_dot, shape.close),
        t.ampm_local, t.start_hints, t.end_hints, t.exact, clock.days, _Memo(clock.offset), names, _SUSPECT, Message, "text")
    if first < 0:
        raise _NoHeader
    exact_get = t.exact.get
    for i, when, date, raw, sender, line, rest in closer:
        if when is None:  # a date or time that does not exist: reported as unparsed lines
            if isinstance(date, tuple):  # the scanner passes a bad time as (time string,)
                bad_times.add(date[0])
            else:
                bad.add(date)
            continue
        body = (line + rest).strip(MARKS)
        messages[i] = Message(when, *_finish(sender, raw, line, rest, body, exact_get(body), False))
    if bad or bad_times:
        messages = [m for m in messages if m is not None]
    return first, messages


def _entries(parts: list, clock: "_Clock", names: _Memo, check_all: bool, bad: set, bad_times: set) -> list[Message]:
    """The messages of one split chunk, column by column: most steps are map() calls that run in C."""
    # split yields, per header: date, time, author (None without one), a flag on how the first line starts, the first
    # line, a flag on how it ends (a flag is None when the line is plain), and the continuation lines
    dates, clocks, raws, starts, firsts, ends, conts = (parts[i::7] for i in range(1, 8))
    n = len(dates)
    exact_get = tables().exact.get
    days = list(map(clock.days.__getitem__, dates))
    deltas = list(map(clock.times.__getitem__, clocks))
    senders = list(map(names.__getitem__, raws))
    bodies = list(map(add, firsts, conts))
    texts = list(map(str.strip, bodies, repeat(MARKS, n)))
    exact = list(map(exact_get, texts))
    kinds, edited = ["text"] * n, [False] * n
    # Only these entries need a closer look; plain text (nine in ten) is done.
    suspect = _SUSPECT
    closer = range(n) if check_all else [
        i for i, fs, fe, s, tx, bo, ex in zip(count(), starts, ends, senders, texts, bodies, exact)
        if fs is not None or fe is not None or ex is not None or tx is not bo or s is None or s is suspect
        or "maps.google" in bo or bo[-1:] == ">"]
    for i in closer:
        senders[i], texts[i], kinds[i], edited[i] = _finish(senders[i], raws[i], firsts[i], conts[i], texts[i], exact[i],
                                                            check_all)
    if None in days or None in deltas:  # dates or times that do not exist: reported as unparsed lines
        keep = [i for i, (day, delta) in enumerate(zip(days, deltas, strict=True)) if day is not None and delta is not None]
        bad.update(dates[i] for i, day in enumerate(days) if day is None)
        bad_times.update(clocks[i] for i, delta in enumerate(deltas) if delta is None)
        days, deltas, senders, texts, kinds, edited = ([col[i] for i in keep]
                                                       for col in (days, deltas, senders, texts, kinds, edited))
    return _messages(list(map(add, days, deltas)), senders, texts, kinds, edited)


# Message(...) called a million times is a third of the parse; object.__new__ plus the slot setters, driven by map()
# in C, build the very same frozen objects at a fraction of the cost. It relies on Message having no __post_init__.
assert not hasattr(Message, "__post_init__")
assert [f.name for f in fields(Message)] == ["time", "sender", "text", "kind", "edited"]
_SETTERS = tuple(getattr(Message, f.name).__set__ for f in fields(Message))


def _messages(*columns: list) -> list[Message]:
    """Message objects from columns (time, sender, text, kind, edited), equal to Message(*row) for each row."""
    objs = list(map(object.__new__, repeat(Message, len(columns[0]))))
    for setter, column in zip(_SETTERS, columns, strict=True):
        deque(map(setter, objs, column), maxlen=0)
    return objs


def _finish(sender: object, raw: str | None, first: str, cont: str, text: str, exact: str | None,
            check_all: bool) -> tuple[str | None, str, str, bool]:
    """The closer look at one entry: its sender, text, kind and edited flag. `text` is first + cont without edge marks,
    `exact` its kind when the whole text is a known placeholder or notice."""
    # A whole body that is a placeholder once its edge marks are gone (iOS writes "\u200eimage omitted") needs no
    # more: no placeholder ends with an edited marker (`tables` checks), so the slow path would give the same.
    if exact is not None and sender is not None and sender is not _SUSPECT:
        return (None if exact == "system" else sender), text, exact, False
    b = first
    if raw is None:
        sender, b = _no_author(b)
    elif sender is _SUSPECT:
        sender, b = _author(raw, b)
    body = b + cont
    text = body.strip(MARKS)
    opened = text is not body and body[0] in MARKS
    text, edited = unedit(text)
    kind = tables().exact.get(text) or classify(text, sender is not None, opened, notices=opened or check_all)
    return (None if kind == "system" else sender), text, kind, edited


def _author(raw: str, b: str) -> tuple[str | None, str]:
    """A suspicious author field: the first words of an author-less notice with ": " in it, or a long name."""
    if is_system_line(raw, b):
        return None, raw + ": " + b
    return clean_name(raw), b


def _no_author(b: str) -> tuple[str | None, str]:
    """A header line without "name: ": a system line, or a name with an empty or "." body."""
    if b.endswith(":") and len(b) > 1:
        return clean_name(b[:-1]), ""  # an empty body ("Amazon EG:")
    if b.endswith(":.") and len(b) > 2:
        return clean_name(b[:-2]), "."  # the disappearing-message shape "Name:."
    return None, b


def _bad_dates(text: str, start: int, end: int, header: re.Pattern, bad: set, bad_times: set,
               order: str) -> list[Unparsed]:
    """Unparsed entries for the lines of every message whose date or time does not exist (rare: a second pass is
    fine)."""
    view = "\n" + text[start:end]  # the main pass's view of the text: line k starts after the k-th newline
    matches = list(header.finditer(view))
    out = []
    line_no, pos = 0, 0
    for i, m in enumerate(matches):
        if m.group(1) in bad:
            why = f"the date {m.group(1)!r} does not exist read as {ORDERS[order]}"
        elif m.group(2) in bad_times:
            why = f"the time {m.group(2)!r} does not exist"
        else:
            continue
        line_no += view.count("\n", pos, m.start() + 1)
        pos = m.start() + 1
        stop = matches[i + 1].start() if i + 1 < len(matches) else len(view)
        for k, line in enumerate(view[m.start() + 1:stop].split("\n")):
            reason = why if k == 0 else "continues an unparsed line"
            out.append(Unparsed(line_no + k, line, reason))
    return out


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
    "klo": Style("{d}.{m}.{Y} klo {H}.{M:02}.{S:02} - ", "dmy", True),  # fi
    "plain": Style("{d}. {m}. {Y}. {H:02}:{M:02}:{S:02} ", "dmy", True),  # hr, sr: spaces in the date, no separator
    "ios_ymd": Style("[{Y}/{m}/{d} {H:02}:{M:02}:{S:02}] ", "ymd", True, ios=True),  # zh, ja: year first, no comma
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
