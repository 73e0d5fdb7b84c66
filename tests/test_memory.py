"""The persona's memory: past exchanges recalled by what the other person just said, never from the future."""

import sqlite3

import pytest

from talkalike.memory import MEMORY_KEY, Memory, exchanges, query_of, recall_turns, with_recalled
from talkalike.template import BUBBLE_SEP


def row(start: str, *pairs: tuple[str, str], rid: str | None = None) -> dict:
    messages = []
    for said, reply in pairs:
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": reply}]
    return {"messages": messages, "start": start, "id": rid or start}


ROWS = [
    row("2025-01-05T10:00:00", ("how is Pita doing?", "pita is asleep on my laptop again 🙈"),
        ("and the scooter?", "still broken" + BUBBLE_SEP + "ugh")),
    row("2025-02-01T09:00:00", ("what time is the concert at the Barby?", "doors at 9")),
    row("2025-03-01T18:00:00", ("שבת אצל ההורים בחיפה?", "כן" + BUBBLE_SEP + "נוסעים בשישי")),
    row("2025-04-01T12:00:00", ("", "morning!!"), ("coffee at Nechama?", "yesss")),
]


def test_every_answered_message_becomes_one_exchange_and_openers_do_not(tmp_path):
    found = list(exchanges(ROWS))
    assert [e.reply for e in found][:2] == ["pita is asleep on my laptop again 🙈", "still broken" + BUBBLE_SEP + "ugh"]
    assert len(found) == 5  # the conversation Noa opened with an empty message contributes only its answered turn
    assert all(e.context for e in found)


def test_recall_finds_the_exchange_about_the_same_thing_first(tmp_path):
    memory = Memory.build(ROWS, tmp_path / "memory.db")
    assert len(memory) == 5
    assert memory.recall("is Pita ok? haven't seen the cat", k=1)[0].reply.startswith("pita is asleep")
    assert memory.recall("when does the concert start", k=1)[0].reply == "doors at 9"
    # Hebrew words are matched like any other script's.
    assert memory.recall("אתם בחיפה בשבת?", k=1)[0].at == "2025-03-01T18:00:00"


def test_recall_never_returns_a_conversation_that_starts_at_or_after_before(tmp_path):
    memory = Memory.build(ROWS, tmp_path / "memory.db")
    assert "yesss" not in [e.reply for e in memory.recall("coffee at Nechama", k=5, before="2025-04-01T12:00:00")]
    assert [e.reply for e in memory.recall("coffee at Nechama", k=5)][0] == "yesss"
    assert all(e.at < "2025-02-01T09:00:00" for e in memory.recall("Pita scooter concert", 5, "2025-02-01T09:00:00"))


def test_a_message_with_no_words_or_quotes_recalls_nothing_and_breaks_nothing(tmp_path):
    memory = Memory.build(ROWS, tmp_path / "memory.db")
    assert memory.recall("😂😂 !!", k=3) == []
    assert memory.recall('say "pita" OR NEAR(', k=3)[0].reply.startswith("pita")  # FTS5 syntax is quoted away


def test_recalled_turns_come_oldest_first_marked_as_memory_and_alternate(tmp_path):
    memory = Memory.build(ROWS, tmp_path / "memory.db")
    history = [{"role": "user", "content": "did you fix the scooter? and how's Pita"}]
    turns = recall_turns(memory, history, k=2)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert all(t[MEMORY_KEY] for t in turns)
    assert {t["content"] for t in turns if t["role"] == "assistant"} == {
        "pita is asleep on my laptop again 🙈", "still broken" + BUBBLE_SEP + "ugh"}
    assert recall_turns(memory, history, k=0) == [] and recall_turns(None, history, k=3) == []


def test_the_query_is_the_latest_message_to_the_persona_not_a_recalled_one():
    history = [{"role": "user", "content": "old", MEMORY_KEY: True}, {"role": "assistant", "content": "x"},
               {"role": "user", "content": "new question"}, {"role": "assistant", "content": "answer"}]
    assert query_of(history) == "new question"


def test_memory_opens_read_only(tmp_path):
    Memory.build(ROWS, tmp_path / "memory.db")
    with pytest.raises(sqlite3.OperationalError):
        Memory.open(tmp_path).connection.execute("DELETE FROM exchanges")
    assert Memory.open(tmp_path / "nowhere") is None


def test_a_training_row_recalls_only_earlier_conversations_after_its_system_line(tmp_path):
    memory = Memory.build(ROWS, tmp_path / "memory.db")
    row = {"messages": [{"role": "system", "content": "Noa is texting with Daniel."}] + ROWS[3]["messages"],
           "start": ROWS[3]["start"], "id": ROWS[3]["id"]}
    messages = with_recalled(row, memory, k=3)
    assert messages[0]["role"] == "system" and messages[-4:] == ROWS[3]["messages"]
    recalled = messages[1:-4]
    assert recalled and all(m[MEMORY_KEY] for m in recalled)
    assert "yesss" not in [m["content"] for m in recalled]  # its own exchange is never recalled
    # A row without a start time still never recalls itself.
    alone = with_recalled({"messages": ROWS[1]["messages"], "id": ROWS[1]["id"]}, memory, k=5)
    assert "doors at 9" not in [m["content"] for m in alone[:-2]]
    assert with_recalled(row, memory, k=0) == row["messages"]


def test_a_reply_to_a_training_turn_recalls_only_conversations_before_its_own_as_training_did(tmp_path):
    from types import SimpleNamespace

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.turns import prompt_messages
    from talkalike.memory import RECALL_LIMIT

    twin = SimpleNamespace(memory=Memory.build(ROWS, tmp_path / "memory.db"), contacts=None, persona="Noa")
    history = [{"role": "user", "content": "coffee at Nechama? and how is Pita"}]
    _, anything, _ = prompt_messages(twin, history, GenerationConfig(memories=5))
    assert "yesss" in [m["content"] for m in anything]  # a plain chat recalls from every conversation
    marked = [history[0] | {RECALL_LIMIT: {"before": ROWS[1]["start"], "besides": ROWS[3]["id"]}}]
    _, recalled, turns = prompt_messages(twin, marked, GenerationConfig(memories=5))
    assert recalled and {m["content"] for m in recalled} <= {"how is Pita doing?", "and the scooter?",
                                                             "pita is asleep on my laptop again 🙈",
                                                             "still broken" + BUBBLE_SEP + "ugh"}
    assert turns == history  # the mark stays out of the prompt
