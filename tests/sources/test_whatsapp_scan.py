"""The C scanner (talkalike/sources/_whatsapp_scan.c) gives exactly the pure-Python parser's result, and is built here.

The pure-Python pass stays the reference: every test parses the same text both ways and compares the whole
ParsedExport (messages, unparsed lines, format, notes) or the error.
"""

import re
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talkalike.errors import TalkalikeError
from talkalike.message import Message
from talkalike.sources import whatsapp
from talkalike.sources.whatsapp import STYLES, parse, render
from talkalike.sources.whatsapp_kinds import MARKS, SPACE, tables

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsapp"
EVERY_FIXTURE = sorted(p for p in FIXTURES.rglob("*.txt") if "golden" not in p.parts)


def _both(text: str, date_order: str | None = None):
    """The parse through the C scanner and through the pure-Python pass: each a ParsedExport or the error's text."""
    def one():
        try:
            return parse(text, "x", date_order)
        except TalkalikeError as error:
            return f"error: {error}"
    fast = one()
    scanner, whatsapp._whatsapp_scan = whatsapp._whatsapp_scan, None
    try:
        slow = one()
    finally:
        whatsapp._whatsapp_scan = scanner
    return fast, slow


def test_the_c_scanner_is_built_in_this_environment_so_the_tests_exercise_it():
    # Without a compiler the parser still works through the pure-Python pass; development and CI must not.
    assert whatsapp._whatsapp_scan is not None, "run `pip install -e .` with a C compiler to build the WhatsApp scanner"
    source = Path(whatsapp.__file__).with_name("_whatsapp_scan.c")
    built = Path(whatsapp._whatsapp_scan.__file__)
    assert built.stat().st_mtime >= source.stat().st_mtime, f"{built.name} is older than its source: run `pip install -e .`"


def test_the_scanner_compiles_in_the_same_invisible_marks_and_timestamp_spaces():
    assert whatsapp._whatsapp_scan.MARKS == MARKS
    assert re.fullmatch(r"\[(.*)\]", SPACE).group(1) == whatsapp._whatsapp_scan.SPACES
    # the scanner knows the latin a.m./p.m. rule itself and gets the local spellings listed
    latin = rf"[AaPp]\.?{SPACE}?[Mm]\.?"
    assert tables().ampm_regex == "|".join([latin] + [re.escape(s).replace(r"\ ", SPACE) for s in tables().ampm_local])
    assert "" not in tables().exact


@pytest.mark.parametrize("path", EVERY_FIXTURE, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_fixture_parses_the_same_through_c_and_python_also_with_crlf_and_a_bom(path):
    text = path.read_bytes().decode("utf-8")
    for variant in (text, text.replace("\n", "\r\n"), "\ufeff" + text, "preamble\n\n" + text + "\n\n"):
        fast, slow = _both(variant)
        assert fast == slow


def test_a_large_rendered_chat_in_every_style_parses_the_same_through_c_and_python():
    base = datetime(2021, 3, 14, 9, 0)
    bodies = ["hi", "<Media omitted>", "image omitted", "This message was deleted", "see maps.google.com/x",
              "edited <This message was edited>", "two\n\nlines: here", "שלום 👨\u200d👩\u200d👧", "a: b: c", "",
              "x <This message was edited>\u200f", "\u200fopened", "closed\u200e", "\u200e\u200f"]
    names = ["Maya", "דנה", "+972 50-123-4567", "a:", "Someone With A Very Long Name Indeed", 'Q "quoted"']
    messages = [Message(base.replace(hour=i % 24, minute=i % 60, second=i % 60), names[i % len(names)],
                        bodies[i % len(bodies)], "text", False) for i in range(3000)]
    for style in STYLES:
        fast, slow = _both(render(messages, style), STYLES[style].order)
        assert fast == slow, style


TIMES = ["9:05", "09:05:07", "9:05\u202fPM", "9:05 pm", "9:05\u00a0p.\u00a0m.", "9:05 a. m.", "9:05 p.m.", "9.05",
         "21.05.07", "9:05 PM", "下午9:05", "오후 9:05", "9:05 לפנה\"צ", "9:05 nachm.", "25:61", "9:5", "9:05:0", "12:00:59\u202fAM", "9:05 Pm."]
DATES = ["12/01/2024", "1/2/24", "31.12.2024", "2024-12-01", "13. 6. 2018.", "2024/1/2", "31/02/2024", "١٢/٠١/٢٠٢٤",
         "1.2.24", "12/13/2024", "1/2/202", "1/2/20245", "123/1/2024", "2024-1-123"]
CLOSES = ["] ", " - ", ": ", " ", ". - ", "]\u00a0", "\u202f-\u202f"]
PIECES = ["Ann: ", "דנה כהן: ", ": ", "~\u202fNoa: ", "\u202a+972 50-123-4567\u202c: ", "\u200e", "\u200f", "\ufeff",
          "<Media omitted>", "image omitted", " <This message was edited>", "This message was deleted", "Dana left",
          "Messages and calls are end-to-end encrypted.", "IMG-1.jpg (file attached)", "POLL:", "maps.google",
          "x", "😂", "\n", "\r\n", "\n\n", "klo ", "[", ", ", "a very long sender name over 24: ", '"q": ', "::", ">"]


def header(draw) -> str:
    return (draw(st.sampled_from(["", "[", "\u200e[", "\u200e"])) + draw(st.sampled_from(DATES))
            + draw(st.sampled_from([", ", " ", ",\u00a0", " klo "])) + draw(st.sampled_from(TIMES))
            + draw(st.sampled_from(CLOSES)))


@st.composite
def export(draw):
    """Entries under one header shape, some under others, with bodies of tricky pieces and plain words."""
    home = header(draw)
    pieces = []
    for _ in range(draw(st.integers(1, 12))):
        pieces.append("\n" + (home if draw(st.integers(0, 4)) else header(draw)))
        pieces += draw(st.lists(st.sampled_from(PIECES + ["hello", "שלום", "ok 👍🏽", "Ann: "] * 3), max_size=4))
    return "".join(pieces).lstrip("\n")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(export(), st.sampled_from([None, "dmy", "mdy", "ymd"]))
def test_random_exports_in_every_shape_parse_the_same_through_c_and_python(text, date_order):
    fast, slow = _both(text, date_order)
    assert fast == slow


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(STYLES)), st.text(max_size=30)), min_size=1, max_size=20))
def test_headers_followed_by_any_characters_parse_the_same_through_c_and_python(rows):
    # One style per file, each header followed by arbitrary text (marks, colons, newlines, surrogate-free unicode).
    style = rows[0][0]
    head = render([Message(datetime(2024, 1, 13, 21, 5, 7 * STYLES[style].seconds), "Ann", "x")], style)
    head = head[:head.index("Ann")]
    text = "".join(head + body + "\n" for _, body in rows)
    fast, slow = _both(text)
    assert fast == slow


HEADER_CHARS = list("0123456789/.-:, []APMapm") + ["\u00a0", "\u202f", "\u200e", "klo", "下午", "오후 ", "p. m.", "٣"]


@st.composite
def near_headers(draw):
    """A file in one style whose lines are its headers with a few characters inserted, dropped or replaced."""
    style = draw(st.sampled_from(sorted(STYLES)))
    when = datetime(2024, 1, draw(st.integers(1, 28)), draw(st.integers(0, 23)), 5, 7 * STYLES[style].seconds)
    rendered = render([Message(when, "Ann", "x")], style)
    head = rendered[:rendered.index("Ann")]
    lines = [head + "Ann: hi"] * 3
    for _ in range(draw(st.integers(1, 8))):
        line = list(head)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(line)))
            op = draw(st.sampled_from(["insert", "drop", "replace"]))
            if op == "insert":
                line.insert(at, draw(st.sampled_from(HEADER_CHARS)))
            elif at < len(line):
                line[at:at + 1] = [] if op == "drop" else [draw(st.sampled_from(HEADER_CHARS))]
        lines.append("".join(line) + draw(st.sampled_from(["Ann: hi", "hi", ": x", "Ann:"])))
    return "\n".join(draw(st.permutations(lines))) + "\n"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_headers())
def test_lines_that_almost_look_like_headers_parse_the_same_through_c_and_python(text):
    fast, slow = _both(text)
    assert fast == slow
