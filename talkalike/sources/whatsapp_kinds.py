"""The per-language tables of what WhatsApp writes, and the kinds they give a message body.

The data is `talkalike/data/whatsapp_locales.json` (media placeholders, deleted and system texts, edited markers,
12h clock spellings, file names, per language). This module loads it once, classifies bodies, and builds the two cheap
regex flags that let the parser skip classification for plain text. Used by `talkalike.sources.whatsapp`.
"""

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# Invisible direction marks and the BOM: never part of structure, names or body edges.
MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
SPACE = "[ \u00a0\u202f]"  # a space in a timestamp; WhatsApp writes NBSP/NNBSP around AM/PM since about 2023
_DROP_MARKS = str.maketrans("", "", MARKS)


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
    flag_start: str  # regex lookahead: a first line that may be media or deleted by how it starts (not exact ones)
    flag_end: str  # regex lookbehinds: likewise by how it ends
    ampm_local: tuple  # the 12h spellings of ampm_regex after its latin a.m./p.m., in its order (for the C scanner)
    start_hints: tuple  # the literal prefixes flag_start looks for
    end_hints: tuple  # the literal suffixes flag_end looks for


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
                ampm[norm_ampm(s)] = offset
    spellings = {s for lang in langs for key in ("am", "pm") for s in lang.get(key, [])}
    # latin a.m./p.m. in every spacing, then the local words; longest first so "p. m." wins over "p"
    local = sorted((s for s in spellings if not re.fullmatch(r"[apAP]\.? ?[mM]\.?", s)), key=len, reverse=True)
    local_re = [re.escape(s).replace(r"\ ", SPACE) for s in local]
    ampm_regex = "|".join([rf"[AaPp]\.?{SPACE}?[Mm]\.?"] + local_re)
    start_hints = _minimal({_literal_ends(p)[0] for p in hinted} - {"<"}, str.startswith)
    end_hints = _minimal({">", ")"} | {_literal_ends(p)[1] for p in hinted}, str.endswith)
    assert not any("\n" in h for h in start_hints + end_hints), "a placeholder hint spans lines"
    prefixes = []
    for lang in langs:
        for template in lang.get("filename", []):
            prefix = template.split("{name}")[0]
            prefixes += [prefix, prefix.replace(" ", "_")]
    edited = tuple(sorted({s for lang in langs for s in lang.get("edited", [])}, key=len, reverse=True))
    # the parser takes an exact placeholder as final without looking for an edited marker on it
    assert not any(s.endswith(edited) for s in exact), "a placeholder in whatsapp_locales.json ends with an edited marker"
    return _Tables(
        exact=exact,
        # media/deleted placeholders decide from the first line; continuation lines (an Android caption) may follow
        media=re.compile(rf"(?:{_alternation(joined('media_patterns'))})(?:\n[\s\S]*)?\Z"),
        deleted=re.compile(_alternation(joined("deleted_patterns"))),
        strong=re.compile(_alternation(joined("system_strong"))),
        weak=re.compile(_alternation(joined("system_weak"))),
        edited=edited,
        ampm=ampm,
        ampm_regex=ampm_regex,
        time_words=tuple(sorted({w for lang in langs for w in lang.get("time_words", [])}, key=len, reverse=True)),
        filename_prefixes=tuple(sorted(set(prefixes), key=len, reverse=True)),
        flag_start=_lookahead(start_hints),
        flag_end=_lookbehinds(end_hints),
        ampm_local=tuple(local),
        start_hints=start_hints,
        end_hints=end_hints,
    )


def _lookahead(prefixes: tuple[str, ...]) -> str:
    """A lookahead for lines starting with one of the prefixes."""
    return "(?=" + "|".join(re.escape(p) for p in prefixes) + ")"


def _lookbehinds(suffixes: tuple[str, ...]) -> str:
    """Lookbehinds for lines ending with a suffix, gated by the last character so plain text fails after one test."""
    by_last: dict[str, list[str]] = {}
    for suffix in suffixes:
        by_last.setdefault(suffix[-1], []).append(suffix)
    gates = []
    for last, group in by_last.items():
        inner = "|".join(f"(?<={re.escape(x)})" for x in group if len(x) > 1)
        gates.append(f"(?<={re.escape(last)})" + (f"(?:{inner})" if inner and last not in group else ""))
    return "(?:" + "|".join(gates) + ")"


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


def norm_ampm(s: str) -> str:
    """An AM/PM mark as a lookup key: lower case, without dots or spaces."""
    return re.sub(r"[\s.\u00a0\u202f]", "", s).lower()


def clean_name(raw: str) -> str:
    """A sender as the person is known: no invisible marks, no `~ ` prefix of non-contacts, plain hyphens and spaces."""
    name = raw.translate(_DROP_MARKS).replace("\u2011", "-").replace("\u00a0", " ").replace("\u202f", " ").strip()
    if name.startswith("~") and len(name) > 1:
        name = name[1:].lstrip()
    return name or raw


def classify(body: str, authored: bool = True, opened_with_mark: bool = False, notices: bool = True) -> str:
    """The kind of a body whose edges are already clean: text, media, deleted or system.

    `notices=False` rules system notices out for an authored body: Android never attributes them, and an iOS export
    that marks its notices with U+200E did not mark this one."""
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
    if (notices or not authored) and t.strong.fullmatch(body):
        return "system"
    if (not authored or opened_with_mark) and t.weak.fullmatch(body):
        return "system"
    return "text" if authored else "system"


def unedit(body: str) -> tuple[str, bool]:
    """The body without its edited marker, and whether it had one."""
    if body.endswith(">"):
        for marker in tables().edited:
            if body.endswith(marker):
                body = body[: -len(marker)].rstrip(MARKS)
                if body.endswith(" "):
                    body = body[:-1]
                return body.rstrip(MARKS), True
    return body, False


def is_system_line(raw: str, rest: str) -> bool:
    """Whether an author-looking line `raw: rest` is really a system notice as a whole."""
    # An Android system line with ": " in it ("... in the community: X", a subject "Trip: Eilat") looks authored;
    # real names are short and unquoted, so only long or quoted "names" come here. A body that reads as a notice on its
    # own ("I created this group") has a real author in front of it.
    strong = tables().strong
    return (strong.fullmatch((raw + ": " + rest).translate(_DROP_MARKS)) is not None
            and strong.fullmatch(rest.translate(_DROP_MARKS)) is None)


def is_suspicious_author(raw: str) -> bool:
    """An author field too long or quoted to be a person's name: maybe the start of a notice with ": " in it."""
    return len(raw) > 24 or any(q in raw for q in "\"“”«»„")
