"""Telegram Desktop JSON exports read into the same records as WhatsApp, through the same interface."""

import json
from datetime import datetime
from pathlib import Path

import pytest

from talkalike.errors import TalkalikeError
from talkalike.sources import SOURCES, read_export, read_exports, telegram

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telegram"


def load(name: str) -> str:
    return (FIXTURES / name / "result.json").read_text(encoding="utf-8")


def test_telegram_is_a_source_with_the_same_parse_interface_as_whatsapp():
    assert SOURCES["telegram"] is telegram.parse
    parsed = SOURCES["telegram"](load("personal"), "fallback", None)
    assert parsed.source == "telegram"
    assert parsed.name == "Maya Levi"
    assert "personal_chat" in parsed.format
    assert parsed.unparsed == []


def test_a_personal_chat_keeps_every_entry_in_file_order_with_its_kind():
    parsed = telegram.parse(load("personal"), "x")
    kinds = [m.kind for m in parsed.messages]
    assert kinds == ["text", "text", "text", "media", "media", "system", "text", "text", "media"]
    assert [m.time for m in parsed.messages] == sorted(m.time for m in parsed.messages)
    assert parsed.messages[0].time == datetime(2023, 3, 4, 9, 15, 2)


def test_hebrew_and_emoji_text_stays_byte_exact():
    first = telegram.parse(load("personal"), "x").messages[0]
    assert first.text == "בוקר טוב! 😀"
    assert first.sender == "Maya Levi"
    group = telegram.parse(load("group"), "x")
    assert group.messages[2].text == "yes!! 🏔️👨‍👩‍👧"


def test_text_given_as_entities_is_joined_to_plain_text_with_its_newlines():
    second = telegram.parse(load("personal"), "x").messages[1]
    assert second.text == "look at https://example.org/x and this\n\nsecond paragraph"
    assert second.kind == "text"


def test_the_edited_field_becomes_the_edited_flag():
    messages = telegram.parse(load("personal"), "x").messages
    assert [m.edited for m in messages] == [False, False, True, False, False, False, False, False, False]
    assert telegram.parse(load("group"), "x").messages[5].edited is True


def test_photos_stickers_voice_and_polls_are_media_and_keep_their_caption():
    personal = telegram.parse(load("personal"), "x").messages
    assert personal[3].kind == "media" and personal[3].text.endswith("\nthe view") and "photo" in personal[3].text
    assert personal[4].kind == "media" and "sticker" in personal[4].text and "❤️" in personal[4].text
    assert personal[8].kind == "media" and "voice_message" in personal[8].text
    poll = telegram.parse(load("group"), "x").messages[6]
    assert poll.kind == "media" and "Which trail?" in poll.text


def test_service_messages_are_system_events_without_a_sender_and_say_what_happened():
    group = telegram.parse(load("group"), "x").messages
    system = [m for m in group if m.kind == "system"]
    assert [m.sender for m in system] == [None, None, None]
    assert system[0].text == "Noa created group «Hiking Crew» with Noa, Dana, Omer"
    assert system[1].text == "Noa added Yael"
    assert "Hiking Crew 🥾" in system[2].text
    call = telegram.parse(load("personal"), "x").messages[5]
    assert call.kind == "system" and call.text == "Dana called (95 s)"


def test_a_deleted_accounts_message_stays_a_message_with_telegrams_name_for_it():
    message = telegram.parse(load("group"), "x").messages[4]
    assert (message.sender, message.text, message.kind) == ("Deleted Account", "hi all", "text")


def test_a_message_with_no_sender_at_all_is_a_system_event():
    data = json.loads(load("group"))
    data["messages"][1].pop("from")
    data["messages"][1].pop("from_id")
    message = telegram.parse(json.dumps(data), "x").messages[1]
    assert (message.sender, message.kind) == (None, "system")


def test_the_whole_account_export_yields_every_chat_under_its_own_name_including_left_groups():
    chats = telegram.parse_all(load("account"), "x")
    assert [c.name for c in chats] == ["Maya Levi", "Hiking Crew", "Old Flatmates"]
    assert [len(c.messages) for c in chats] == [9, 8, 2]
    assert chats[2].messages[1].text == "Dana left the group"
    with pytest.raises(TalkalikeError, match="holds 3 chats"):
        telegram.parse(load("account"), "x")


def test_read_export_recognises_result_json_by_its_content():
    parsed = read_export(FIXTURES / "group" / "result.json")
    assert (parsed.name, parsed.source, len(parsed.messages)) == ("Hiking Crew", "telegram", 8)
    assert len(read_exports(FIXTURES / "account" / "result.json")) == 3


def test_telegram_desktops_export_folder_can_be_given_instead_of_its_result_json(tmp_path):
    assert read_export(FIXTURES / "group").name == "Hiking Crew"
    with pytest.raises(TalkalikeError, match="is a folder"):
        read_export(tmp_path)


def test_a_chat_without_a_name_takes_the_name_of_its_folder(tmp_path):
    data = json.loads(load("personal"))
    del data["name"]
    folder = tmp_path / "ChatExport_2023-03-06"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(data), encoding="utf-8")
    assert read_export(folder / "result.json").name == "ChatExport_2023-03-06"


@pytest.mark.parametrize("text, message", [
    ('{"name": "x", "messages": [', "not valid JSON"),
    ('{"hello": "world"}', "not a Telegram Desktop export"),
    ('{"name": "x", "messages": [{"id": 1, "type": "message", "text": "no date"}]}', "message 1 has no readable date"),
    ('{"chats": {"list": []}}', "holds no chats"),
])
def test_json_that_is_not_a_telegram_export_is_one_clear_error(text, message):
    with pytest.raises(TalkalikeError, match=message):
        telegram.parse(text, "x")


def test_two_chats_with_the_same_name_in_one_account_export_stay_apart():
    data = json.loads(load("account"))
    data["chats"]["list"][1]["name"] = "Maya Levi"
    first, second, _ = telegram.parse_all(json.dumps(data), "x")
    assert first.name == "Maya Levi #4410001" and second.name == "Maya Levi #1877001"
    assert any("also called 'Maya Levi'" in note for note in second.notes)
