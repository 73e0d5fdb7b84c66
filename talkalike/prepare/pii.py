"""What counts as personal data in a text: spans with a kind and a normalised key, for the privacy pass.

    from talkalike.prepare.pii import find
    find("call 054-123-4567 or dana@example.com", regions=("IL",))
    # [Found(5, 17, 'PHONE', '+972541234567'), Found(21, 37, 'EMAIL', 'dana@example.com')]

Recall comes first: the *shape* of a value decides whether it is personal data; the libraries (phonenumbers,
python-stdnum) decide only its kind and its key, the normalised value that makes two spellings one placeholder.

- URL: links that survived `clean`.
- EMAIL: addresses in any script (`דנה@דוגמה.ישראל`), and spelled out: `name [at] example [dot] com`,
  `name (at) example.com`, `name at example dot com`.
- IBAN: two letters, two digits and 11-30 letters or digits, any case, spaced or not. Kept out when the checksum is
  right *or* the length is the one the country's IBAN has (a mistyped check digit is still someone's account).
- ID: national IDs with letters, by shape: DNI/NIE (`12345678Z`, `X1234567L`), UK NINO, Indian PAN, Italian codice
  fiscale, Mexican CURP, Finnish HETU, Chilean RUT ending in K, and any word of 8-20 letters and digits holding 6 or
  more digits (passports, ID cards). All-digit IDs are digit runs, below; stdnum's validators name their kind.
- Digit runs: any run of 7 or more digits written with the separators people type (space, no-break space, dot,
  dash, en/em dash, slash, parentheses, a leading + or 00). 13-19 digits that pass Luhn, or grouped like a card
  (4-4-4-4), are CARD; a valid number in one of `regions` is PHONE; a number an ID validator accepts is ID; any other
  run of up to 15 digits is PHONE all the same (libphonenumber's metadata lags behind new ranges), longer ones NUMBER.

What stays, because people write it all day: dates with a year (12.03.2025, 2025-03-12, 12/3/25), year ranges
(2019-2023), times (the colon is no separator), and two ambiguous shapes that stay unless a phone number of a chat's
region says otherwise: counts and prices of up to 8 digits grouped in thousands (1.250.000, 1 200 000 ₪), and runs
of one- and two-digit numbers joined by dots or dashes (10.30-11.45) or holding single digits (1 2 3 4 5 6 7). Pairs
joined by spaces alone (12 34 56 78) are a Danish or French phone number and go. Runs under 7 digits stay (a price, a
flight, a house number).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn, numdb
from stdnum.au import tfn
from stdnum.be import nn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.de import idnr as de_idnr
from stdnum.dk import cpr
from stdnum.fr import nir
from stdnum.il import idnr as il_idnr
from stdnum.in_ import aadhaar
from stdnum.kr import rrn
from stdnum.nl import bsn
from stdnum.no import fodselsnummer
from stdnum.pl import pesel
from stdnum.ro import cnp
from stdnum.se import personnummer
from stdnum.tr import tckimlik
from stdnum.us import ssn
from stdnum.za import idnr as za_idnr

from talkalike.prepare.clean import LINK

PHONE, EMAIL, URL, CARD, IBAN, ID, NUMBER = "PHONE", "EMAIL", "URL", "CARD", "IBAN", "ID", "NUMBER"


@dataclass(frozen=True, slots=True)
class Found:
    """One piece of personal data: text[start:end], its kind and its normalised key."""

    start: int
    end: int
    kind: str
    key: str


# ---------------------------------------------------------------- patterns

_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.(?:[^\W\d_]{2,}|xn--[\w\-]+)(?!\w)")
# Spelled-out addresses. A bracketed or spaced @ goes with any dot; the bare word "at" only with a spelled-out dot,
# since "I'm at home. Then" is a sentence.
_BRACKET_AT = r"\s*[\[({<]\s*(?:at|@)\s*[\])}>]\s*|\s+@\s*|\s*@\s+"
_WORD_AT = r"\s+at\s+"
_SPELT_DOT = r"\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+dot\s+"
_LABEL = r"[^\W\d_][\w\-]*"
_SPELT_EMAIL = re.compile(
    rf"(?<![\w.%+\-])[\w.%+\-]+(?:(?:{_BRACKET_AT}){_LABEL}(?:(?:{_SPELT_DOT}|\.){_LABEL})*(?:{_SPELT_DOT}|\.)"
    rf"|(?:{_WORD_AT}){_LABEL}(?:(?:{_SPELT_DOT}){_LABEL})*(?:{_SPELT_DOT}))[^\W\d_]{{2,24}}(?!\w)",
    re.IGNORECASE)
_AT_WORD = re.compile(r"(?<![^\W\d_])at(?![^\W\d_])", re.IGNORECASE)
_DOT_WORD = re.compile(r"(?<![^\W\d_])dot(?![^\W\d_])", re.IGNORECASE)
_BRACKET = re.compile(r"[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_NON_DIGIT = re.compile(r"\D+")
_IBAN = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,30}(?!\w)")
_LETTER_IDS = [re.compile(p) for p in (
    r"(?<![\w\-])[XYZxyz]?-?\d{7,8}-?[A-Za-z](?![\w\-])",  # es DNI / NIE
    r"(?<!\w)[A-Za-z]{2}\d{6}[A-Da-d](?!\w)|(?<!\w)[A-Z]{2} \d{2} \d{2} \d{2} [A-D](?!\w)",  # gb NINO
    r"(?<!\w)[A-Z]{3}[PCHFATBLJG][A-Z]\d{4}[A-Z](?!\w)",  # in PAN
    r"(?<!\w)(?=\w*\d)[A-Za-z]{6}[0-9LMNP-Vlmnp-v]{2}[A-Za-z][0-9LMNP-Vlmnp-v]{2}[A-Za-z][0-9LMNP-Vlmnp-v]{3}[A-Za-z]"
    r"(?!\w)",  # it codice fiscale (digits may be letters: omocodia)
    r"(?<!\w)[A-Za-z]{4}\d{6}[HMXhmx][A-Za-z]{5}[A-Za-z0-9]\d(?!\w)",  # mx CURP
    r"(?<![\w\-])\d{6}[-+Aa]\d{3}[0-9A-Ya-y](?!\w)",  # fi HETU
    r"(?<![\w.\-])\d{1,2}\.?\d{3}\.?\d{3}-[\dKk](?!\w)",  # cl RUT
    r"(?<![\w@/])(?=(?:[A-Za-z]*\d){6})(?=\d*[A-Za-z])[A-Za-z0-9]{8,20}(?![\w@])",  # passports, ID cards
)]
_SPACE = " \u00a0\u202f"
_SEPARATORS = ".\\-\u2010-\u2015/()"
# A digit run: digits joined by at most a space, one separator and a space; not glued to a number before it (nor to a
# time's colon or a decimal point), nor followed by one.
_RUN = re.compile(rf"(?<![\d+])(?<!\d[:.,])(?:\+|00|\(\+?)?\d(?:[{_SPACE}]?[{_SEPARATORS}]?[{_SPACE}]?\d)*\)?"
                  rf"(?!\d|[:,]\d|\.\d)")
_GROUP = re.compile(r"\d+")
# Dates with a year, and year ranges: hidden before digit runs are looked for, so "12/03/2025 3 people" stays.
_DATE = re.compile(r"(?<![\d.\-/])(?:(\d{1,2})([./\-])(\d{1,2})\2(?:\d{4}|\d{2})|\d{4}([./\-])(\d{1,2})\4(\d{1,2}))"
                   r"(?!\d|[./\-]\d)")
_YEARS = re.compile(r"(?<![\d.\-/])(?:19|20)\d\d ?[\-\u2013/] ?(?:(?:19|20)\d\d|\d\d)(?!\d|[./\-]\d)")
_THOUSANDS = re.compile(r"[1-9]\d{0,2}(?:([. \u00a0\u202f'’])\d{3})(?:\1\d{3})*")
_CARD_GROUPS = re.compile(r"\d{4}(?:[ \-]\d{4}){3}(?:[ \-]\d{1,3})?|\d{4}[ \-]\d{6}[ \-]\d{4,5}")
_COMPACT_DATE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")
# All-digit national IDs whose checksum names the kind (a run of their length is kept out either way).
_DIGIT_IDS = (il_idnr, ssn, cpf, de_idnr, nir, pesel, personnummer, cpr, fodselsnummer, bsn, nn, tckimlik, cnp, rrn,
              sin, tfn, aadhaar, za_idnr)
_IBAN_LENGTHS: dict[str, int] = {}


def _iban_length(country: str) -> int | None:
    """The full length of the IBAN of a country (from stdnum's IBAN registry), None where it has none."""
    if country not in _IBAN_LENGTHS:
        info = numdb.get("iban").info(country + "00")[0][1]
        bban = info.get("bban")
        _IBAN_LENGTHS[country] = 4 + sum(int(n) for n in re.findall(r"(\d+)!?[nac]", bban)) if bban else 0
    return _IBAN_LENGTHS[country] or None


# ---------------------------------------------------------------- finding


def maybe(text: str) -> bool:
    """False when no finder could match (no '@', link, 4 digits or spelled-out address): most chat messages."""
    if "@" in text or "://" in text or "www." in text or "WWW." in text:
        return True
    if _DIGIT.search(text) is not None and len(_NON_DIGIT.sub("", text)) >= 4:
        return True
    lower = text.lower()
    if "at" not in lower:
        return False
    if "dot" in lower and _DOT_WORD.search(text) is not None and _AT_WORD.search(text) is not None:
        return True
    return any(c in text for c in "[({<") and _BRACKET.search(text) is not None


def find(text: str, regions: Sequence[str] = ()) -> list[Found]:
    """Every piece of personal data in `text`, in order, not overlapping; `regions` name national phone formats."""
    if not maybe(text):
        return []
    found: list[Found] = []
    taken: list[tuple[int, int]] = []

    def claim(start: int, end: int, kind: str, key: str) -> None:
        if not any(start < e and s < end for s, e in taken):
            taken.append((start, end))
            found.append(Found(start, end, kind, key))

    if "://" in text or "www." in text.lower():
        for m in LINK.finditer(text):
            claim(m.start(), m.end(), URL, m.group())
    if "@" in text:
        for m in _EMAIL.finditer(text):
            claim(m.start(), m.end(), EMAIL, m.group().lower())
    # Cheap tests first: most messages have no '@', no digits and no bracket, and skip every pattern below.
    if "@" in text or (_AT_WORD.search(text) and (_DOT_WORD.search(text) or _BRACKET.search(text))):
        for m in _SPELT_EMAIL.finditer(text):
            claim(m.start(), m.end(), EMAIL, _spelt_key(m.group()))
    digits = 0 if _DIGIT.search(text) is None else len(_NON_DIGIT.sub("", text))
    if digits >= 4:
        if digits >= 13:
            for m in _IBAN.finditer(text):
                span = _iban_span(m.group())
                if span:
                    claim(m.start(), m.start() + len(span), IBAN, iban.compact(span).upper())
        for pattern in _LETTER_IDS:
            for m in pattern.finditer(text):
                claim(m.start(), m.end(), ID, re.sub(r"[\s.\-]", "", m.group()).upper())
    if digits >= 7:
        hidden = _hide_dates(text)
        for m in _RUN.finditer(hidden):
            start, end = m.span()
            if any(start < e and s < end for s, e in taken):
                continue
            kind_key = classify(m.group(), regions)
            if kind_key:
                claim(start, end, *kind_key)
    found.sort(key=lambda f: f.start)
    return found


def _hide_dates(text: str) -> str:
    """The text with dates and year ranges blanked out (same length), so digit runs stop at them."""
    for pattern in (_DATE, _YEARS):
        text = pattern.sub(lambda m: "\0" * len(m.group()) if _real_date(m) else m.group(), text)
    return text


def _real_date(m: re.Match) -> bool:
    if m.re is _YEARS:
        return True
    if m.group(1):  # day and month in either order
        a, b = int(m.group(1)), int(m.group(3))
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    return 1 <= int(m.group(5)) <= 12 and 1 <= int(m.group(6)) <= 31


def classify(run: str, regions: Sequence[str] = ()) -> tuple[str, str] | None:
    """(kind, key) for a digit run, or None when it stays: under 7 digits, or a count, time or date by its shape."""
    digits = "".join(_GROUP.findall(run))
    n = len(digits)
    if n < 7:
        return None
    bare = run.lstrip("(")
    if bare.startswith(("+", "00")):
        return PHONE, _international(digits[2:] if bare.startswith("00") else digits)
    if 13 <= n <= 19 and (luhn.is_valid(digits) or _CARD_GROUPS.fullmatch(run)):
        return CARD, digits
    if n > 15:
        return NUMBER, digits
    groups = _GROUP.findall(run)
    # Counts in thousands stop at 8 digits: 9 digits in threes is a Polish or Spanish mobile far more often than a
    # count in the hundreds of millions. Pairs separated by spaces alone are a Danish or French number, not a time.
    pairs = all(len(g) == 2 for g in groups) and bool(set(run) - set("0123456789 \u00a0\u202f"))
    ambiguous = (_THOUSANDS.fullmatch(run) is not None and n <= 8) or (
        digits[0] != "0" and max(map(len, groups)) <= 2 and (pairs or min(map(len, groups)) == 1))
    if ambiguous or (len(groups) == 1 and _COMPACT_DATE.fullmatch(digits)):
        phone = _valid_phone(run, regions)
        if phone:
            return PHONE, phone
        return None
    if re.fullmatch(r"\d{3}-\d{2}-\d{4}", run) and ssn.is_valid(run):
        return ID, digits
    phone = _valid_phone(run, regions)
    if phone:
        return PHONE, phone
    if _digit_id(run):
        return ID, digits
    return PHONE, _possible_phone(run, regions) or digits


def _digit_id(run: str) -> bool:
    return any(module.is_valid(run) for module in _DIGIT_IDS)


def _parse(run: str, region: str):
    try:
        return phonenumbers.parse(run, region)
    except phonenumbers.NumberParseException:
        return None


def _valid_phone(run: str, regions: Sequence[str]) -> str | None:
    """E.164 of the run as a valid number of the first region that has it, else None."""
    for region in regions:
        number = _parse(run, region)
        if number is not None and phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _possible_phone(run: str, regions: Sequence[str]) -> str | None:
    """E.164 of the run as a possible (right length) number of a region: 054-123-4567 and +972 54-123-4567 are one."""
    for region in regions:
        number = _parse(run, region)
        if number is not None and phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def _international(digits: str) -> str:
    number = _parse("+" + digits, None)
    if number is None:
        return "+" + digits
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _iban_span(candidate: str) -> str | None:
    """The longest leading part (whole groups) of an IBAN-shaped match that is an IBAN by checksum or by length."""
    words = re.split(r"(?<=[ \-])", candidate)
    for end in range(len(words), 0, -1):
        span = "".join(words[:end]).rstrip(" -")
        compact = iban.compact(span).upper()
        if iban.is_valid(compact) or len(compact) == _iban_length(compact[:2]):
            return span
    return None


def _spelt_key(text: str) -> str:
    """name [at] example [dot] com -> name@example.com"""
    words = re.findall(r"[\w%+\-]+(?:\.[\w%+\-]+)*", text)
    local, rest = words[0], [w for w in words[1:] if w.lower() not in ("at", "dot")]
    return (local + "@" + ".".join(rest)).lower()
