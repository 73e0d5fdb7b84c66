"""The segment stage: conversations split on silence, turns keep their message boundaries, unusable ones are counted."""

from datetime import datetime, timedelta

from talkalike.message import Message
from talkalike.prepare.segment import GAP, NO_PERSONA, ONE_TURN, keep_usable, segment

T0 = datetime(2024, 3, 1, 9, 0)


def msg(minutes: float, sender: str, text: str = "hi") -> Message:
    return Message(T0 + timedelta(minutes=minutes), sender, text)


def test_the_default_gap_is_one_hour_as_in_the_original():
    assert GAP == timedelta(minutes=60)


def test_a_silence_of_59_minutes_continues_the_conversation():
    conversations = segment([msg(0, "Noa"), msg(59, "Daniel")], chat="Noa")
    assert len(conversations) == 1
    assert [t.sender for t in conversations[0].turns] == ["Noa", "Daniel"]


def test_a_silence_of_61_minutes_starts_a_new_conversation():
    conversations = segment([msg(0, "Noa"), msg(61, "Daniel")], chat="Noa")
    assert len(conversations) == 2
    assert conversations[1].start == T0 + timedelta(minutes=61)
    assert conversations[0].end == T0


def test_the_gap_is_configurable():
    messages = [msg(0, "Noa"), msg(20, "Daniel"), msg(25, "Noa")]
    assert len(segment(messages, gap=timedelta(minutes=10))) == 2
    assert len(segment(messages, gap=timedelta(minutes=30))) == 1


def test_consecutive_messages_of_one_sender_form_one_turn_with_boundaries_kept():
    messages = [msg(0, "Noa", "hey"), msg(1, "Noa", "u up?"), msg(2, "Daniel", "Yes."), msg(3, "Noa", "ok")]
    [conversation] = segment(messages, chat="Noa")
    assert [(t.sender, t.messages) for t in conversation.turns] == [
        ("Noa", ("hey", "u up?")),
        ("Daniel", ("Yes.",)),
        ("Noa", ("ok",)),
    ]
    assert conversation.turns[0].start == T0 and conversation.turns[0].end == T0 + timedelta(minutes=1)
    assert conversation.chat == "Noa"


def test_a_gap_inside_one_senders_burst_splits_the_turn_too():
    conversations = segment([msg(0, "Noa", "a"), msg(90, "Noa", "b")])
    assert [c.turns[0].messages for c in conversations] == [("a",), ("b",)]


def test_conversations_without_the_persona_are_dropped_and_counted():
    conversations = segment([msg(0, "Daniel"), msg(1, "Avi"), msg(200, "Noa"), msg(201, "Daniel")])
    kept, dropped = keep_usable(conversations, persona="Noa")
    assert len(kept) == 1 and kept[0].senders() == {"Noa", "Daniel"}
    assert dropped == {NO_PERSONA: 1}


def test_conversations_with_fewer_than_two_turns_are_dropped_and_counted():
    conversations = segment([msg(0, "Noa", "a"), msg(1, "Noa", "b"), msg(100, "Noa"), msg(101, "Daniel")])
    kept, dropped = keep_usable(conversations, persona="Noa")
    assert len(kept) == 1 and len(kept[0].turns) == 2
    assert dropped == {ONE_TURN: 1}


def test_no_messages_give_no_conversations():
    assert segment([]) == []
