"""WhatsApp parser: golden files over one fixture per format and quirk, plus the behaviours the import promises.

Golden files live in tests/fixtures/whatsapp/golden/: `<fixture>.jsonl` is exactly what `talkalike parse` prints and
`<fixture>.meta.json` holds the detected format, the notes and the unparsed lines. Each was checked by hand. After a
deliberate parser change, rewrite them with
`TALKALIKE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/sources/test_whatsapp.py` and review the diff line by line.
"""

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from talkalike.errors import TalkalikeError
from talkalike.sources import whatsapp
from talkalike.sources.whatsapp import MARKS, chat_name_from_filename, parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "whatsapp"
GOLDEN = FIXTURES / "golden"
EXPORTS = sorted(p for p in FIXTURES.rglob("*.txt")
                 if "whatsapp-export-inconsistencies" not in p.parts and "golden" not in p.parts)
MIXED = [  # test files that put one line per format into one file (see the fixtures README)
    FIXTURES / "chat-miner/history-5f8eadf/test/whatsapp/testlog.txt",
    FIXTURES / "whatsapp-chat-parser/tests/parser.test.ts.inline-lines.txt",
    FIXTURES / "langchain-community/libs/community/tests/examples/whatsapp_chat.txt",
]


def _read(path: Path):
    return parse(path.read_bytes().decode("utf-8"), chat_name_from_filename(path.name))


def _golden_name(path: Path) -> str:
    return str(path.relative_to(FIXTURES)).replace("/", "__").removesuffix(".txt")


def _lines(text: str) -> list[str]:
    """The file's lines as the parser counts them: BOM dropped, CRLF as LF, the final newline ending the last line."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").removesuffix("\n")
    return text.split("\n")


@pytest.mark.parametrize("path", EXPORTS, ids=_golden_name)
def test_each_fixture_parses_exactly_to_its_hand_checked_golden_file(path):
    parsed = _read(path)
    got = [json.dumps(m.to_json(), ensure_ascii=False) for m in parsed.messages]
    meta = {"format": parsed.format, "notes": parsed.notes,
            "unparsed": [[u.line_no, u.line, u.reason] for u in parsed.unparsed]}
    jsonl, meta_file = GOLDEN / f"{_golden_name(path)}.jsonl", GOLDEN / f"{_golden_name(path)}.meta.json"
    if os.environ.get("TALKALIKE_REGEN_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        jsonl.write_text("".join(line + "\n" for line in got), encoding="utf-8")
        meta_file.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    assert got == jsonl.read_text(encoding="utf-8").splitlines()
    assert meta == json.loads(meta_file.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", EXPORTS, ids=_golden_name)
def test_every_input_line_lands_in_exactly_one_place(path):
    text = path.read_bytes().decode("utf-8")
    parsed = _read(path)
    lines = _lines(text)
    accounted = sum(m.text.count("\n") + 1 for m in parsed.messages) + len(parsed.unparsed)
    assert accounted == len(lines)
    for u in parsed.unparsed:
        assert lines[u.line_no - 1] == u.line


@pytest.mark.parametrize("path", EXPORTS, ids=_golden_name)
def test_invisible_marks_never_stay_in_names_or_at_the_edges_of_a_body(path):
    for m in _read(path).messages:
        assert m.sender is None or not any(c in m.sender for c in MARKS)
        assert m.sender is None or not m.sender.startswith("~")
        assert not m.text.startswith(tuple(MARKS)) and not m.text.endswith(tuple(MARKS))


@pytest.mark.parametrize("path", MIXED, ids=lambda p: p.name)
def test_a_mixed_format_test_file_is_read_in_its_majority_shape_and_keeps_every_other_line(path):
    # The promise for files that mix shapes (real exports never do): the majority shape is the file's shape; lines
    # of other shapes stay verbatim in the message before them, or are unparsed when before the first header; and a
    # note counts them.
    text = path.read_bytes().decode("utf-8")
    parsed = _read(path)
    assert any("another shape" in note for note in parsed.notes)
    header = whatsapp._header_regex(whatsapp._detect(text)[0], leading_newline=False).match
    kept = "\n".join(m.text for m in parsed.messages)
    unparsed = {u.line for u in parsed.unparsed}
    others = [line for line in _lines(text) if not header(line)]
    assert others and all(line in unparsed or line in kept for line in others)


def test_bodies_stay_byte_exact_with_emoji_zwj_and_hebrew():
    text = "1.10.2026, 16:47 - דנה: אני! 👨\u200d👩\u200d👧\u200d👦 ²ﬁ Ｆ\n"
    (m,) = parse(text, "x").messages
    assert m.text == "אני! 👨\u200d👩\u200d👧\u200d👦 ²ﬁ Ｆ"  # no NFKC: ² ﬁ and full-width letters survive


def test_phone_number_authors_and_the_tilde_prefix_are_normalised():
    text = ("12/01/2024, 09:00 - \u202a+972 50-123-4567\u202c: a\n"
            "12/01/2024, 09:01 - ~\u202fNoa: b\n"
            "12/01/2024, 09:02 - \u200f+1 (777) 777\u20117777\u200f: c\n")
    senders = [m.sender for m in parse(text, "x").messages]
    assert senders == ["+972 50-123-4567", "Noa", "+1 (777) 777-7777"]


@pytest.mark.parametrize("clock,expected", [
    ("9:05 AM", (9, 5)), ("9:05 pm", (21, 5)), ("9:05\u202fPM", (21, 5)), ("12:05\u202fam", (0, 5)),
    ("12:05 p.m.", (12, 5)), ("9:05 p. m.", (21, 5)), ("9:05\u00a0p.\u00a0m.", (21, 5)), ("9:05 a.m.", (9, 5)),
])
def test_twelve_hour_clocks_read_every_local_spelling(clock, expected):
    text = f"25/12/2023, {clock} - Ann: hi\n25/12/2023, {clock} - Bob: yo\n"
    times = [(m.time.hour, m.time.minute) for m in parse(text, "x").messages]
    assert times == [expected, expected]


def test_a_year_first_date_is_always_year_month_day_even_on_a_short_chat():
    (m,) = parse("2024/12/01, 10:04 - Li: hi\n", "x").messages
    assert m.time == datetime(2024, 12, 1, 10, 4)


def test_an_ambiguous_day_month_order_is_noted_and_the_flag_overrides_it():
    text = "01/02/2020, 10:00 - Ann: a\n03/04/2020, 10:00 - Bob: b\n"
    auto = parse(text, "x")
    assert any("ambiguous" in n and "--date-order" in n for n in auto.notes)
    forced = parse(text, "x", date_order="mdy")
    assert forced.notes == []
    assert [m.time.date() for m in forced.messages] == [datetime(2020, 1, 2).date(), datetime(2020, 3, 4).date()]
    assert "m/d/y" in forced.format


def test_day_month_order_is_inferred_from_dates_beyond_the_detection_sample():
    # 3000 ambiguous headers fill the sample; one month-first date (a second field above 12) sits in the middle.
    lines = [f"0{1 + i % 9}/0{1 + i % 9}/2020, 10:00 - Ann: message {i}" for i in range(6000)]
    lines[3000] = "02/25/2020, 10:00 - Bob: the deciding date"
    parsed = parse("\n".join(lines), "x")
    assert parsed.notes == []
    assert "m/d/y" in parsed.format
    assert parsed.messages[3000].time == datetime(2020, 2, 25, 10, 0)


def test_a_header_shaped_line_pasted_into_a_message_is_a_header_even_when_it_goes_back_in_time():
    text = "12/01/2024, 09:08 - Dana: here is the old chat:\n01/01/2020, 10:00 - Tom: pasted\n"
    messages = parse(text, "x").messages
    assert [(m.sender, m.time.year) for m in messages] == [("Dana", 2024), ("Tom", 2020)]


def test_colon_space_in_a_system_line_or_a_body_never_creates_a_false_author():
    text = ('12/01/2024, 09:01 - Dana changed the subject from "Trip" to "Trip: Eilat"\n'
            "12/01/2024, 09:02 - Sarah added you to a group in the community: Hiking Club\n"
            "12/01/2024, 09:03 - Tom: time: 8: sharp\n")
    messages = parse(text, "x").messages
    assert [(m.sender, m.kind) for m in messages] == [(None, "system"), (None, "system"), ("Tom", "text")]
    assert messages[2].text == "time: 8: sharp"


def test_the_edited_marker_is_removed_and_recorded():
    (m,) = parse("12/01/2024, 09:14 - Dana: sample message <This message was edited>\n", "x").messages
    assert (m.text, m.edited, m.kind) == ("sample message", True, "text")


def test_ios_system_lines_attributed_to_a_person_are_system_only_when_marked_or_unmistakable():
    text = ("[19/10/2025, 01:04:00] Lappers: \u200eKim left\n"
            "[19/10/2025, 01:05:00] Kim: I left\n"
            "[19/10/2025, 01:06:00] Kim: \u200eimage omitted\n")
    kinds = [(m.sender, m.kind) for m in parse(text, "x").messages]
    assert kinds == [(None, "system"), ("Kim", "text"), ("Kim", "media")]


def test_attachment_bodies_from_public_examples_are_media():
    for name in ("inconsistencies-media__attachments-conformant.examples.txt",
                 "inconsistencies-media__attachments-non-conformant.examples.txt"):
        for line in (FIXTURES / "whatsapp-export-inconsistencies" / name).read_text().splitlines():
            body = line.strip(MARKS + " ")
            if line.startswith("#") or not body or body in ("test_document", "Helsinki"):
                continue  # section titles, and the Android caption lines that follow a file
            assert whatsapp.classify(body) == "media", body


@pytest.mark.parametrize("body,kind", [
    ("<Media omitted>", "media"), ("<המדיה לא נכללה>", "media"), ("תמונה הושמטה", "media"),
    ("<מצורף: 00000012-PHOTO-2026-10-01-16-47-30.jpg>", "media"), ("IMG-1.jpg (הקובץ מצורף)", "media"),
    ("<Multimedia omitido>", "media"), ("<Medien ausgeschlossen>", "media"), ("<Mídia oculta>", "media"),
    ("<Médias omis>", "media"), ("<Media omessi>", "media"), ("<attached: 00000001-PHOTO-2019-01-01-12-00-00.jpg>", "media"),
    ("This message was deleted", "deleted"), ("You deleted this message", "deleted"), ("הודעה זו נמחקה", "deleted"),
    ("מחקת הודעה זו", "deleted"), ("Se eliminó este mensaje.", "deleted"), ("Diese Nachricht wurde gelöscht.", "deleted"),
    ("Questo messaggio è stato eliminato", "deleted"), ("Ce message a été supprimé", "deleted"),
    ("Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, can read or listen "
     "to them. Tap to learn more.", "system"),
    ("Messages you send to this group are now secured with end-to-end encryption. Tap for more info.", "system"),
    ("ההודעות והשיחות מוצפנות מקצה לקצה. רק המשתתפים בצ'אט הזה יכולים לקרוא, להאזין או לשתף אותן.", "system"),
    ('עדי יצר/ה את הקבוצה "טיול"', "system"), ("Your security code with Tom changed. Tap to learn more.", "system"),
    ("Missed video call", "system"), ('Ana creó el grupo "Viaje"', "system"), ('Luca ha creato il gruppo "Calcetto"', "system"),
    ("hello there", "text"), ("I left", "text"), ("<3 you", "text"),
])
def test_kinds_are_recognised_by_their_text_in_several_languages(body, kind):
    assert whatsapp.classify(body) == kind


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("  \n\n", "empty"), ("hello\nthis is a plain note\n", "not a WhatsApp chat export"),
    ("PK\x03\x04\x00\x00binary", "binary"), ('{"name": "Telegram"}', "not a WhatsApp chat export"),
])
def test_a_file_that_is_not_a_chat_export_gets_one_clear_error(text, why):
    with pytest.raises(TalkalikeError) as err:
        parse(text, "notes.txt")
    assert why in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_or_unfitting_date_order_flag_is_a_clear_error():
    with pytest.raises(TalkalikeError, match="date order"):
        parse("12/01/2024, 09:14 - Dana: hi\n", "x", date_order="dym")
    with pytest.raises(TalkalikeError, match="do not start with the year"):
        parse("12/01/2024, 09:14 - Dana: hi\n", "x", date_order="ymd")


@pytest.mark.parametrize("filename,name", [
    ("WhatsApp Chat with Maya.txt", "Maya"), ("WhatsApp Chat - Maya.zip", "Maya"), ("WhatsApp Chat with Maya (1).txt", "Maya"),
    ("WhatsApp_Chat_with_Maya_Cohen.txt", "Maya Cohen"), ("Chat de WhatsApp con Ana María.txt", "Ana María"),
    ("WhatsApp Chat mit Anna.txt", "Anna"), ("Conversa do WhatsApp com João.txt", "João"),
    ("Discussion WhatsApp avec Claire.txt", "Claire"), ("Chat WhatsApp con Luca.txt", "Luca"),
    ("/some/dir/WhatsApp Chat with דנה.txt", "דנה"), ("family.txt", "family"),
])
def test_the_chat_name_comes_from_the_export_file_name_in_any_language(filename, name):
    assert chat_name_from_filename(filename) == name


def test_hebrew_twelve_hour_marks_and_arabic_indic_digits_are_read():
    hebrew = "1.10.2026, 4:46 אחה״צ - דנה: שלום\n13.10.2026, 12:05 לפנה״צ - עדי: לילה\n"
    assert [m.time for m in parse(hebrew, "x").messages] == [datetime(2026, 10, 1, 16, 46), datetime(2026, 10, 13, 0, 5)]
    arabic = "[١٧/٠١/٢٠٢٣, ١٠:١٤:٠١ ص] محمد: مرحبا\n[١٧/٠١/٢٠٢٣, ١٠:١٥:٠١ م] سارة: أهلاً\n"
    messages = parse(arabic, "x").messages
    assert [m.time for m in messages] == [datetime(2023, 1, 17, 10, 14, 1), datetime(2023, 1, 17, 22, 15, 1)]
    assert [m.sender for m in messages] == ["محمد", "سارة"]


def test_exports_larger_than_one_chunk_parse_whole_across_chunk_boundaries():
    from talkalike.message import Message

    base = datetime(2021, 3, 14, 9, 0)
    messages = [Message(base.replace(minute=i % 60, hour=9 + i % 12), ("Maya", "דנה", "Tom")[i % 3],
                        f"line {i}: {'x' * (i % 50)}" + ("\nsecond line\n\nfourth" if i % 7 == 0 else ""), "text", False)
                for i in range(40_000)]
    text = whatsapp.render(messages, "android")
    assert len(text) > 2 * whatsapp._CHUNK
    parsed = parse("preamble line\n" * 200_000 + text, "x", date_order="dmy")  # the preamble alone spans chunks
    assert parsed.messages == messages
    assert len(parsed.unparsed) == 200_000 and parsed.unparsed[-1].line_no == 200_000


def test_every_header_grammar_listed_in_the_locale_data_parses_its_example():
    grammars = json.loads((Path(whatsapp.__file__).parents[1] / "data" / "whatsapp_locales.json").read_text())
    for grammar in grammars["header_grammars"]:
        (m,) = parse(grammar["example"] + "\n", "x").messages
        assert (m.sender, m.text, m.kind) == ("Maya", "hi", "text"), grammar["name"]


N_, B_, L_ = "\u202f", "\u00a0", "\u200e"
CATALOGUE = [  # one line per shape in the research catalogue of export formats (None: date order is ambiguous)
 ("30/12/2020, 13:00 - a: m", datetime(2020,12,30,13,0)),
 ("30/12/2020 13:00 - a: m", datetime(2020,12,30,13,0)),
 ("20/01/19, 11:23 - John Doe: hi", datetime(2019,1,20,11,23)),
 ("8/21/21, 11:06 PM - NAME: MESSAGE", datetime(2021,8,21,23,6)),
 (f"1/14/23, 7:02{N_}PM - Ann: hi", datetime(2023,1,14,19,2)),
 (f"09/10/2023, 11:11{N_}am - +44 7123 456789: <Media omitted>", None),
 (f"28/3/2025, 9:29{B_}p.{B_}m. - user1: hi", datetime(2025,3,28,21,29)),
 (f"20/6/2017 8:28 p.{B_}m. - Michelle: test", datetime(2017,6,20,20,28)),
 ("2016-04-15, 3:04 p.m. - Ann: hi", datetime(2016,4,15,15,4)),
 ("03.08.21, 12:30 - Ann: message 1", None),
 ("15.04.2016, 15:04 - Ann: hi", datetime(2016,4,15,15,4)),
 ("19-10-2022 10:37:00 p.m. - John Doe: dashes", datetime(2022,10,19,22,37)),
 ("2019-01-01 12:00 - John Doe: Hello", datetime(2019,1,1,12,0)),
 ("2024/12/01, 10:04 pm - Ann: hi", datetime(2024,12,1,22,4)),
 ("2022/12/14, 13:34. - John Doe: hi", datetime(2022,12,14,13,34)),
 ("13.6.2018 klo 21.25.15 - a: m", datetime(2018,6,13,21,25,15)),
 ("02.05.18 à 18:00 - Michel: message", None),
 ("13-06-2018, 01.55 PM - a: m", datetime(2018,6,13,13,55)),
 ("13. 6. 2018. 21:25:15 a: m", datetime(2018,6,13,21,25,15)),
 ("24/3/14, 13:59:59: Sender Name: Message", datetime(2014,3,24,13,59,59)),
 ("3/24/14, 1:59:59 PM: Sender Name: Message", datetime(2014,3,24,13,59,59)),
 ("13.06.18 21.25.15: a: m", datetime(2018,6,13,21,25,15)),
 ("[19/10/2025, 01:02:19] Lappers: hi", datetime(2025,10,19,1,2,19)),
 (f"[8/15/23, 9:12:33{N_}AM] Dr. Feather: hi", datetime(2023,8,15,9,12,33)),
 ("[12/27/20, 18:51:14] My Group 2023: hi", datetime(2020,12,27,18,51,14)),
 ("[14.08.2024, 21:00:10] Boris: hi", datetime(2024,8,14,21,0,10)),
 ("[13.1.2019, 12.00.00] John Doe: Hello", datetime(2019,1,13,12,0,0)),
 ("[12.3.2022 klo 14.08.18] Matias Virtanen: hi", None),
 ("[2023/5/4, 16:13:23] ~ Carolina: hi", datetime(2023,5,4,16,13,23)),
 ("[2026/7/9 02:28:09] Alice: Hey", datetime(2026,7,9,2,28,9)),
 ("[27-11-18 18:43:20] Tom Hanks: Message", datetime(2018,11,27,18,43,20)),
 ("[01-29-2018, 23:33:00] Alice: Hello?", datetime(2018,1,29,23,33)),
 ("[3/16/18 1:55:00 p. m.] a: m", datetime(2018,3,16,13,55)),
 ("[10.21.21, 15:21:45] John Doe: hi", datetime(2021,10,21,15,21,45)),
 (f"{L_}[1/16/16, 9:58:07 PM] R&R: {L_}image omitted", datetime(2016,1,16,21,58,7)),
]


@pytest.mark.parametrize("line,when", CATALOGUE, ids=[line[:40] for line, _ in CATALOGUE])
def test_every_catalogued_header_shape_parses_to_its_time_and_sender(line, when):
    (m,) = parse(line + "\n", "x").messages
    assert m.sender and not m.sender.startswith("~")
    assert when is None or m.time == when


def test_a_twelve_hour_mark_before_the_time_is_read_in_chinese_korean_and_japanese():
    chinese = "2023/5/4 下午4:13 - 小明: 你好\n2023/5/4 上午12:05 - 小红: 早\n"
    korean = "2020. 3. 17. 오후 7:42 - 철수: 안녕\n2020. 3. 17. 오전 12:30 - 영희: 네\n"
    japanese = "[2023/05/04 午後4:13:23] 太郎: こんにちは\n"
    assert [m.time for m in parse(chinese, "x").messages] == [datetime(2023, 5, 4, 16, 13), datetime(2023, 5, 4, 0, 5)]
    assert [m.time for m in parse(korean, "x").messages] == [datetime(2020, 3, 17, 19, 42), datetime(2020, 3, 17, 0, 30)]
    assert [(m.time, m.sender) for m in parse(japanese, "x").messages] == [(datetime(2023, 5, 4, 16, 13, 23), "太郎")]


def test_a_long_named_sender_typing_notice_like_words_keeps_the_message():
    text = ("12/01/2024, 09:00 - Alexandra Konstantinopoulou-Smith: I created this group\n"
            "12/01/2024, 09:01 - Sarah added you to a group in the community: Hiking Club\n")
    messages = parse(text, "x").messages
    assert [(m.sender, m.kind) for m in messages] == [("Alexandra Konstantinopoulou-Smith", "text"), (None, "system")]
