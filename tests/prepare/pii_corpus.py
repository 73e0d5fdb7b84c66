"""The PII benchmark corpus: planted personal data in many countries and spellings, and ordinary text with numbers.

    from tests.prepare.pii_corpus import planted, ordinary
    items = planted()        # [Planted(bubbles=("my number is 050-234-5678 🙂",), secret="050-234-5678", ...), ...]
    texts = ordinary()       # ["see you on 12/03/2025 at 10:30", ...]: nothing here may be replaced

Every item is built from data below, deterministically (no randomness, no network). A planted item is one sender's
bubbles (a value may be split across two); `secret` is what must not survive, `country` and `form` say what it is.
Used by tests/prepare/test_pii_corpus.py (recall must be 100%) and benchmarks/pii_recall.py (prints both figures).
"""

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType


@dataclass(frozen=True)
class Planted:
    """One planted value: the bubbles it is written in, what must not survive, where it is from and how it is written."""

    bubbles: tuple[str, ...]
    secret: str
    country: str
    form: str


# Around each value: English, Hebrew, Spanish and Portuguese sentences, emoji, a value at the edge of a bubble.
FRAMES = ["my number is {} 🙂", "{}", "שלחי לי ל-{} בבקשה", "call {}, after 6", "el mío es {}.", "anota: {} 😂",
          "({})", "meu número {} ok"]

PHONE_REGIONS = ["IL", "US", "GB", "DE", "FR", "ES", "IT", "BR", "IN", "MX", "NL", "SE", "PL", "AU", "CA", "JP", "KR",
                 "TR", "CH", "AR"]

# Numbers libphonenumber calls invalid (ranges its metadata lacks, or fictional): recall must not depend on it.
INVALID_PHONES = [("IL", "054-123-4567"), ("IL", "054-1234567"), ("IL", "054.123.4567"), ("IL", "054 123 45 67"),
                  ("IL", "+972 54-123-4567"), ("US", "(415) 555-0199"), ("US", "415–555–0199"), ("US", "+1 415 555 0199"),
                  ("GB", "07700 900123"), ("IL", "0541234567"), ("IL", "00972 54 123 4567"), ("US", "415/555/0199")]


def _spellings(national: str, international: str) -> list[tuple[str, str]]:
    """A number as people type it: as formatted, with dots, dashes, en-dashes, slashes, no separators, 00."""
    digits = "".join(c for c in national if c.isdigit())
    plain = " ".join(national.replace("(", " ").replace(")", " ").replace("-", " ").split())
    return [("national", national), ("international", international), ("dots", plain.replace(" ", ".")),
            ("dashes", plain.replace(" ", "-")), ("en-dash", plain.replace(" ", "\u2013")),
            ("slash", plain.replace(" ", "/", 1)), ("digits only", digits),
            ("00 prefix", "00" + international[1:])]


def phones() -> list[Planted]:
    """Every region's example mobile in eight spellings, plus numbers libphonenumber calls invalid."""
    out = []
    for i, region in enumerate(PHONE_REGIONS):
        number = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        for j, (form, spelt) in enumerate(_spellings(national, international)):
            out.append(Planted((FRAMES[(i + j) % len(FRAMES)].format(spelt),), spelt, region, f"phone, {form}"))
    for i, (region, spelt) in enumerate(INVALID_PHONES):
        out.append(Planted((FRAMES[i % len(FRAMES)].format(spelt),), spelt, region, "phone, invalid per libphonenumber"))
    return out


EMAILS = [("IL", "dana.levi@example.co.il", "ascii"), ("IL", "דנה@דוגמה.ישראל", "IDN, Hebrew"),
          ("DE", "jürgen.müller@bücher.de", "IDN, German"), ("RU", "иван@пример.рф", "IDN, Cyrillic"),
          ("US", "John.Smith+news@Example.COM", "mixed case, plus tag"), ("US", "name [at] example [dot] com", "spelled, brackets"),
          ("GB", "sam (at) example (dot) co (dot) uk", "spelled, parentheses"), ("ES", "lucia at gmail dot com", "spelled, words"),
          ("FR", "marie @ example.fr", "spaced @"), ("BR", "joao_silva99@exemplo.com.br", "ascii"),
          ("US", "bob{at}example{dot}org", "spelled, braces"), ("JP", "taro@例え.jp", "IDN, Japanese"),
          ("IL", "noa.k [at] walla [dot] co [dot] il", "spelled, brackets"), ("US", "ALICE@EXAMPLE.NET", "upper case")]

IBANS = [("DE", "DE89 3704 0044 0532 0130 00"), ("GB", "GB82 WEST 1234 5698 7654 32"), ("FR", "FR14 2004 1010 0505 0001 3M02 606"),
         ("ES", "ES91 2100 0418 4502 0005 1332"), ("IT", "IT60 X054 2811 1010 0000 0123 456"), ("NL", "NL91 ABNA 0417 1643 00"),
         ("IL", "IL62 0108 0000 0009 9999 999"), ("BE", "BE68 5390 0754 7034"), ("PL", "PL61 1090 1014 0000 0712 1981 2874"),
         ("CH", "CH93 0076 2011 6238 5295 7"), ("SE", "SE45 5000 0000 0583 9825 7466"), ("BR", "BR97 0036 0305 0000 1000 9795 493P 1")]

CARDS = [("Visa", "4111 1111 1111 1111"), ("Mastercard", "5555-5555-5555-4444"), ("Amex", "3782 822463 10005"),
         ("Discover", "6011111111111117"), ("Visa, 13 digits", "4222222222222"), ("Diners", "3056 9309 0259 04"),
         ("JCB", "3530 1113 3330 0000"), ("Visa, bad check digit", "4111 1111 1111 1112"), ("Maestro", "6759 6498 2643 8453")]

IDS = [("IL", "123456782", "Teudat Zehut"), ("IL", "039337423", "Teudat Zehut"), ("US", "536-90-4399", "SSN"),
       ("ES", "12345678Z", "DNI"), ("ES", "X1234567L", "NIE"), ("IT", "RCCMNL83S18D969H", "codice fiscale"),
       ("BR", "390.533.447-05", "CPF"), ("DE", "36574261809", "Steuer-IdNr"), ("FR", "2 95 10 99 126 111 93", "NIR"),
       ("GB", "AB123456C", "NINO"), ("GB", "QQ 12 34 56 C", "NINO, spaced"), ("IN", "ABCPE1234F", "PAN"),
       ("IN", "2345 6789 0124", "Aadhaar"), ("PL", "44051401359", "PESEL"), ("SE", "811228-9874", "personnummer"),
       ("DK", "211062-5629", "CPR"), ("NO", "15108695088", "fødselsnummer"), ("NL", "111222333", "BSN"),
       ("BE", "85.07.30-033.28", "rijksregisternummer"), ("TR", "17291716060", "T.C. Kimlik"),
       ("MX", "HEGG560427MVZRRL04", "CURP"), ("CL", "12.345.678-5", "RUT"), ("CL", "76.086.428-K", "RUT with K"),
       ("CN", "11010519491231002X", "resident ID"), ("FI", "131052-308T", "HETU"), ("CA", "046 454 286", "SIN"),
       ("AU", "123 456 782", "TFN"), ("ZA", "7503305044089", "ID number"), ("RO", "1630615123457", "CNP"),
       ("KR", "900101-1234567", "RRN"), ("DE", "T22000129", "Personalausweis"), ("US", "C03005988", "passport"),
       ("IL", "12345678-9", "ID, dashed check digit"), ("AR", "20-12345678-6", "CUIL")]

# A value sent in two bubbles by one sender: the scan runs on the whole turn.
SPLIT = [("IL", ("054-765", "4321"), "054-765-4321", "phone"), ("US", ("4111 1111", "1111 1111"), "4111 1111 1111 1111", "card"),
         ("GB", ("+44 7911", "123456"), "+44 7911 123456", "phone"), ("IL", ("IL62 0108 0000", "0009 9999 999"),
                                                                     "IL62 0108 0000 0009 9999 999", "IBAN"),
         ("IL", ("my number 052", "555 9876"), "052 555 9876", "phone"), ("DE", ("+49 1512", "3456789 ruf an"),
                                                                       "+49 1512 3456789", "phone"),
         ("FR", ("06 12 34", "56 78"), "06 12 34 56 78", "phone"), ("US", ("5555 5555 5555", "4444"), "5555 5555 5555 4444", "card")]


def planted() -> list[Planted]:
    """Every planted item: phones, e-mails, IBANs (as written and lower case), cards, IDs, values split in two."""
    out = phones()
    for i, (country, email, form) in enumerate(EMAILS):
        out.append(Planted((FRAMES[i % len(FRAMES)].format(email),), email, country, f"e-mail, {form}"))
    for i, (country, value) in enumerate(IBANS):
        out.append(Planted((FRAMES[i % len(FRAMES)].format(value),), value, country, "IBAN"))
        out.append(Planted((f"iban {value.lower()} thanks",), value.lower(), country, "IBAN, lower case"))
        out.append(Planted((f"{value.replace(' ', '')} is the account",), value.replace(" ", ""), country, "IBAN, compact"))
    for i, (form, card) in enumerate(CARDS):
        out.append(Planted((FRAMES[i % len(FRAMES)].format(card) + " exp 12/27",), card, "any", f"card, {form}"))
    for i, (country, value, form) in enumerate(IDS):
        out.append(Planted((FRAMES[(i + 3) % len(FRAMES)].format(value),), value, country, f"ID, {form}"))
    for country, bubbles, value, form in SPLIT:
        out.append(Planted(bubbles, value, country, f"{form}, split across two bubbles"))
    return out


# Ordinary text with numbers: nothing in it is personal data, so nothing may change.
ORDINARY = [
    # dates
    "see you on 12/03/2025", "the party is 12.03.2025 at Noa's", "deadline 2025-03-12 ok?", "flight on 3/12/25, back 3/19/25",
    "from 12.03 to 15.03", "between 2019-2023 I lived there", "born 1987, she was", "1990–2024 best years",
    "20/12/2024 13:40 arrived", "on 12/03/2025 3 people came", "12.03.2025 - 15.03.2025 in Eilat", "the 2024/25 season",
    "March 12, 2025 works", "תאריך 12.3.25 בערב", "2025-03-12T10:30 in the log lol",
    # times
    "at 10:30", "meet 22:15?", "10.30-11.45 dentist", "14:00-16:30 meeting", "7pm or 19:30", "the 07:45 train",
    "from 9:00 to 17:00 every day", "opening hours 08:00-20:00", "run 5:32 per km",
    # prices and counts
    "it was ₪1,500", "1.250.000 € for the flat", "$2,499.99 on sale", "1 200 000 ₪ 😱", "costs 350 NIS", "€ 12.50 each",
    "USD 1,000,000", "population 9,800,000", "12,000 views already", "1500 steps", "3 kids and 2 dogs", "42 people",
    "1 2 3 4 5 6 7 8 go", "paid 89.90", "rent is 6500 a month", "salary 15.000 brutto", "sold 2,345,678 copies",
    "9.8 million people", "12.500.000 visitors", "10k run", "1.5M views", "ordered 24 pizzas, 3 left",
    # versions, scores, flights, codes
    "iOS 17.4.1 broke it", "v2.10.3 is out", "Python 3.11.7", "Android 14 update", "won 3-2", "6-4 6-3 7-5 what a match",
    "21-19, 18-21, 21-15", "LY315 lands at 14:05", "flight UA 954", "gate B12", "seat 23A", "room 214", "bus 480",
    "COVID-19 test", "mp3 or 4K?", "1080p only", "100km/h", "marathon 42.195 km", "32°C today", "99.5% sure",
    "24/7 open", "5'11 tall", "PIN? no way", "score 98/100", "ticket #4821", "level 57", "page 312", "chapter 11",
    # addresses with house numbers
    "Herzl 12, apt 4", "Dizengoff 99 Tel Aviv", "221B Baker Street", "Rothschild 22 floor 3", "Calle Mayor 5, 3º B",
    "Hauptstraße 7, 10115 Berlin", "1600 Amphitheatre Pkwy, Mountain View", "Rua Augusta 1200, São Paulo",
    "12 rue de Rivoli, 75001 Paris", "Via Roma 10, 00184 Roma",
    # mixed
    "we were 2 and then 3 more came at 20:30", "2 + 2 = 4", "1/2 cup sugar, 3/4 flour", "x2 speed", "top 10 list",
    "in 2 weeks", "3rd time", "the 90s", "11/11 sale", "tabs: 3 of 12", "chapter 3.2.1", "windows 11 22H2",
    "IP 192.168", "since 1999", "1999 and 2003", "ISO 9001", "A4 paper", "M&M's 200g", "₪ 49.90 / month",
]
# Ordinary text in shapes the scan cannot tell from personal data (recall comes first): measured, not promised.
HARD = [
    "Rothschild 22, 6688218 Tel Aviv", "Mountain View, CA 94043-1351", "ISBN 978-3-16-148410-0", "router 192.168.1.10",
    "5 sets: 6-4 3-6 7-6 4-6 6-3", "pi is 3.14159265", "1234567 steps this year", "tracking 1Z999AA10123456784",
    "10 20 30 40 50 push-ups",
]


def ordinary() -> list[str]:
    """Ordinary sentences with dates, times, prices, counts, versions, scores, flights and addresses."""
    return ORDINARY + HARD


def survives(secret: str, texts: list[str]) -> bool:
    """Whether any of a planted value is still in the texts: as written (any case), or for a value with 7 or more
    digits its last 7 digits in any spelling (placeholders' own numbers aside)."""
    joined = " ".join(texts)
    if secret.lower() in joined.lower():
        return True
    digits = re.sub(r"\D", "", secret)
    return len(digits) >= 7 and digits[-7:] in re.sub(r"\D", "", re.sub(r"\[[A-Z]+_\d+\]", "", joined))
