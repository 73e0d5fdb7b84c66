"""Property test: random chats rendered in every export style parse back to the same messages, with no line lost."""

from datetime import datetime

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from talkalike.message import Message
from talkalike.sources import whatsapp
from talkalike.sources.whatsapp import STYLES, parse, render

HEBREW = "אבגדהוזחטיכלמנסעפצקרשת"
EMOJI = ["😂", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🎉", "❤️"]
NAMES = ["Maya", "דנה כהן", "Yossi 🚀", "+972 50-123-4567", "John-John Doe", "Dr. Feather", "محمد", "👩\u200d💻 Tal", "a:"]
TRICKY_LINES = ["", " ", "2016-04-29 10:30:00", "12/03/2020 is a date: ok", "time: 8: sharp", "a - b: c",
                "see [1/2/20, 10:00] there", "OPTION: yes", "נפגשים ב-8:30: בתחנה"]

text_chars = st.sampled_from(list("abcxyz XYZ,.!?-/:'0123456789()") + list(HEBREW) + EMOJI + [": "])
free_line = st.lists(text_chars, max_size=12).map("".join)
# A line that starts with a digit or "[" could be a real header of the style; a pasted header is a header by design.
line = st.one_of(free_line.map(lambda s: "x" + s if s[:1].isdigit() or s[:1] == "[" else s),
                 st.sampled_from(TRICKY_LINES))
body = st.lists(line, min_size=1, max_size=4).map("\n".join)
name_chars = st.sampled_from(list("abcdefXYZ -.'") + list(HEBREW) + EMOJI)
random_name = st.lists(name_chars, min_size=1, max_size=12).map("".join).filter(
    lambda s: s == s.strip() and not s.startswith("~") and s[:1] not in "-'")
sender = st.one_of(st.sampled_from(NAMES), random_name)

MEDIA = ["<Media omitted>", "image omitted", "IMG-20240101-WA0001.jpg (file attached)", "<המדיה לא נכללה>",
         "<attached: 00000001-PHOTO-2019-01-01-12-00-00.jpg>", "IMG-20240101-WA0002.jpg (file attached)\ncaption: nice"]
DELETED = ["This message was deleted", "You deleted this message", "הודעה זו נמחקה"]
SYSTEM = ['You created group "Trip: Eilat"', "Dana left", "Sarah added you to a group in the community: Hiking Club",
          "Messages and calls are end-to-end encrypted. Only people in this chat can read, listen to, or share them.",
          'עדי כהן יצר/ה את הקבוצה "טיול"', "Missed voice call"]


@st.composite
def message(draw, seconds: bool) -> Message:
    t = draw(st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2060, 12, 31)))
    t = t.replace(microsecond=0, second=t.second if seconds else 0)
    kind = draw(st.sampled_from(["text"] * 8 + ["media", "deleted", "system"]))
    if kind == "system":
        return Message(t, None, draw(st.sampled_from(SYSTEM)), "system", False)
    who = draw(sender)
    if kind == "text":
        text = draw(body)
        assume(whatsapp.classify(text) == "text")  # a body the tables read as a placeholder is not text
        return Message(t, who, text, "text", draw(st.booleans()))
    return Message(t, who, draw(st.sampled_from(MEDIA if kind == "media" else DELETED)), kind, False)


@st.composite
def chat(draw):
    style = draw(st.sampled_from(sorted(STYLES)))
    messages = draw(st.lists(message(STYLES[style].seconds), min_size=1, max_size=12))
    return style, messages


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(chat())
def test_rendered_random_chats_parse_back_to_the_same_messages_with_no_line_lost(case):
    style, messages = case
    text = render(messages, style)
    parsed = parse(text, "x", date_order=STYLES[style].order)
    assert parsed.unparsed == []
    assert sum(m.text.count("\n") + 1 for m in parsed.messages) == len(text.removesuffix("\n").split("\n"))
    assert parsed.messages == messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(chat())
def test_without_the_flag_the_inferred_order_is_right_whenever_the_dates_decide_it(case):
    style, messages = case
    order = STYLES[style].order
    decisive = order == "ymd" or any(m.time.day > 12 and m.time.day != m.time.month for m in messages)
    assume(decisive)
    assert parse(render(messages, style), "x").messages == messages


header_bits = st.sampled_from(["12/01/2024, 09:00 - ", "[12/01/2024, 09:00:00] ", "\u200e", "Ann: ", ": ", "\n", "\r\n",
                               "31/02/2024, 09:00 - ", "1/2/24, 9:00\u202fPM - ", "<Media omitted>", " <This message was edited>",
                               "\ufeff", "~\u202f", "2024/12/01 ", "klo ", "POLL:", "x", "דנה", "😂"])


@settings(max_examples=300, deadline=None)
@given(st.lists(header_bits, max_size=30).map("".join))
def test_any_text_either_parses_with_every_line_accounted_for_or_gets_a_clear_error(text):
    try:
        parsed = parse(text, "x")
    except whatsapp.TalkalikeError as err:
        assert str(err) and "\n" not in str(err)
        return
    lines = text.replace("\r\n", "\n").removeprefix("\ufeff").removesuffix("\n").split("\n")
    assert sum(m.text.count("\n") + 1 for m in parsed.messages) + len(parsed.unparsed) == len(lines)
