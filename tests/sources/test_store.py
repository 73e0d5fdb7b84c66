"""The SQLite store: idempotent and overlapping imports, one transaction per import, ordered reads, removal."""

import sqlite3
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import talkalike.store as store_module
from talkalike.errors import TalkalikeError
from talkalike.home import store_path
from talkalike.message import Message, ParsedExport
from talkalike.store import Store

T0 = datetime(2024, 5, 1, 9, 0)


def export(messages: list[Message], name: str = "Maya", source: str = "whatsapp") -> ParsedExport:
    return ParsedExport(name=name, source=source, format="test", messages=list(messages))


def chat_history(n: int, start: int = 0) -> list[Message]:
    """Messages start..start+n-1, one per minute, alternating senders, with a system line every tenth."""
    out = []
    for i in range(start, start + n):
        when = T0 + timedelta(minutes=i)
        if i % 10 == 0:
            out.append(Message(when, None, f"system event {i}", "system"))
        else:
            out.append(Message(when, "Maya" if i % 2 else "Dana", f"message {i}"))
    return out


def count_rows(store: Store) -> int:
    return store.connection.execute("SELECT count(*) FROM messages").fetchone()[0]


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path) as opened:
        yield opened


def test_the_store_lives_in_the_data_folder_and_keeps_what_was_imported(tmp_path):
    with Store.open(tmp_path) as store:
        store.import_export(export(chat_history(5)))
    assert store_path(tmp_path).exists()
    with Store.open(tmp_path) as reopened:
        assert [(c.name, c.messages) for c in reopened.chats()] == [("Maya", 5)]


def test_importing_the_same_export_again_adds_nothing(store):
    first = store.import_export(export(chat_history(30)))
    again = store.import_export(export(chat_history(30)))
    assert (first.added, first.skipped) == (30, 0)
    assert (again.added, again.skipped) == (0, 30)
    assert count_rows(store) == 30


def test_system_events_without_a_sender_are_not_duplicated_on_reimport(store):
    system_only = [Message(T0, None, "Messages are end-to-end encrypted.", "system")]
    store.import_export(export(system_only))
    assert store.import_export(export(system_only)).added == 0
    assert count_rows(store) == 1


def test_reimporting_a_later_overlapping_export_adds_only_the_new_messages(store):
    store.import_export(export(chat_history(50)))
    later = store.import_export(export(chat_history(50, start=30)))  # 30..79 overlaps 30..49
    assert (later.added, later.skipped) == (30, 20)
    stored = [m.text for _, m in store.messages()]
    assert len(stored) == 80
    assert stored[0] == "system event 0" and stored[-1] == "message 79"


def test_identical_messages_sent_twice_in_one_minute_stay_twice(store):
    twice = [Message(T0, "Dana", "ok"), Message(T0, "Dana", "ok"), Message(T0, "Maya", "ok")]
    assert store.import_export(export(twice)).added == 3
    assert store.import_export(export(twice)).added == 0
    assert [m.sender for _, m in store.messages()] == ["Dana", "Dana", "Maya"]


def test_an_export_cut_between_two_identical_messages_gains_the_second_one_later(store):
    both = [Message(T0, "Dana", "ok"), Message(T0, "Dana", "ok")]
    store.import_export(export(both[:1]))
    assert store.import_export(export(both)).added == 1
    assert count_rows(store) == 2


def test_a_failure_midway_through_an_import_leaves_the_store_as_it_was(store, monkeypatch):
    store.import_export(export(chat_history(10)))
    real_row = store_module._row
    calls = {"n": 0}

    def failing_row(*args):
        calls["n"] += 1
        if calls["n"] == 500:
            raise RuntimeError("disk on fire")
        return real_row(*args)

    monkeypatch.setattr(store_module, "_row", failing_row)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.import_export(export(chat_history(1000, start=10), name="Other"))
    assert calls["n"] == 500  # the failure really came after rows had been inserted
    assert count_rows(store) == 10
    assert [c.name for c in store.chats()] == ["Maya"]


def test_ctrl_c_during_a_multi_file_import_rolls_back_every_file(store, monkeypatch):
    real_row = store_module._row
    calls = {"n": 0}

    def interrupted_row(*args):
        calls["n"] += 1
        if calls["n"] == 150:
            raise KeyboardInterrupt
        return real_row(*args)

    monkeypatch.setattr(store_module, "_row", interrupted_row)
    with pytest.raises(KeyboardInterrupt):
        store.import_exports([(export(chat_history(100), name="A"), None), (export(chat_history(100), name="B"), None)])
    assert count_rows(store) == 0
    assert store.chats() == []


def test_a_failed_import_is_invisible_to_another_connection_and_the_file_is_intact(tmp_path, monkeypatch):
    with Store.open(tmp_path) as store:
        store.import_export(export(chat_history(5)))
        monkeypatch.setattr(store_module, "_row", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
        with pytest.raises(ValueError):
            store.import_export(export(chat_history(5, start=5)))
    other = sqlite3.connect(store_path(tmp_path))
    assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert other.execute("SELECT count(*) FROM messages").fetchone() == (5,)
    other.close()


def test_messages_come_ordered_by_chat_then_time_then_file_order(store):
    same_minute = [Message(T0, "Dana", "first"), Message(T0, "Maya", "second"), Message(T0, "Dana", "third")]
    earlier = [Message(T0 - timedelta(days=1), "Maya", "yesterday")]
    store.import_export(export(same_minute + earlier, name="Zed"))
    store.import_export(export([Message(T0, "Noa", "hi")], name="Alpha"))
    got = [(chat, m.text) for chat, m in store.messages()]
    assert got == [("Alpha", "hi"), ("Zed", "yesterday"), ("Zed", "first"), ("Zed", "second"), ("Zed", "third")]


def test_messages_round_trip_every_field(store):
    original = [
        Message(T0, "נועה", "שלום 👨‍👩‍👧\n\nשורה שנייה", "text", True),
        Message(T0 + timedelta(seconds=7), "Dana", "<Media omitted>", "media", False),
        Message(T0 + timedelta(minutes=1), None, "Dana left", "system", False),
        Message(T0 + timedelta(minutes=2), "Dana", "This message was deleted", "deleted", False),
    ]
    store.import_export(export(original))
    assert [m for _, m in store.messages()] == original


def test_messages_can_be_limited_to_some_chats_and_an_unknown_chat_is_an_error(store):
    store.import_export(export(chat_history(3), name="A"))
    store.import_export(export(chat_history(4), name="B"))
    assert {chat for chat, _ in store.messages(["B"])} == {"B"}
    assert len(list(store.messages(["B"]))) == 4
    with pytest.raises(TalkalikeError, match="no chat named 'C'"):
        list(store.messages(["C"]))


def test_the_chat_name_defaults_to_the_exports_own_name_and_can_be_given(store):
    assert store.import_export(export(chat_history(2), name="Maya")).chat == "Maya"
    assert store.import_export(export(chat_history(2), name="Maya"), chat="Work").chat == "Work"
    assert [c.name for c in store.chats()] == ["Maya", "Work"]


def test_chats_report_counts_sources_and_date_ranges(store):
    store.import_export(export(chat_history(3), name="A"))
    store.import_export(export(chat_history(2, start=100), name="B", source="telegram"))
    a, b = store.chats()
    assert (a.name, a.source, a.messages, a.first, a.last) == ("A", "whatsapp", 3, T0, T0 + timedelta(minutes=2))
    assert (b.name, b.source, b.messages) == ("B", "telegram", 2)


def test_one_chat_name_cannot_mix_two_sources(store):
    store.import_export(export(chat_history(2), name="Maya"))
    with pytest.raises(TalkalikeError, match="--chat"):
        store.import_export(export(chat_history(2), name="Maya", source="telegram"))
    assert count_rows(store) == 2


def test_people_counts_senders_across_chats_without_system_events(store):
    store.import_export(export(chat_history(10), name="A"))  # 1 system, Maya 5 (odd), Dana 4
    store.import_export(export([Message(T0, "Dana", "hi"), Message(T0, "Dana", "system-ish", "system")], name="B"))
    people = {p.name: p for p in store.people()}
    assert set(people) == {"Maya", "Dana"}
    assert (people["Dana"].messages, people["Dana"].chats) == (5, ("A", "B"))
    assert (people["Maya"].messages, people["Maya"].chats) == (5, ("A",))


def test_removing_a_chat_removes_its_messages_and_nothing_else(store):
    store.import_export(export(chat_history(7), name="A"))
    store.import_export(export(chat_history(3), name="B"))
    assert store.remove_chat("A") == 7
    assert [c.name for c in store.chats()] == ["B"]
    assert count_rows(store) == 3
    with pytest.raises(TalkalikeError, match="no chat named 'A'"):
        store.remove_chat("A")


def test_other_stages_can_keep_their_own_tables_through_the_connection(tmp_path):
    with Store.open(tmp_path) as store:
        store.connection.execute("CREATE TABLE IF NOT EXISTS privacy_map (real TEXT PRIMARY KEY, alias TEXT)")
        store.connection.execute("INSERT INTO privacy_map VALUES ('Maya', 'Person A')")
    with Store.open(tmp_path) as reopened:
        assert reopened.connection.execute("SELECT alias FROM privacy_map").fetchone() == ("Person A",)


def test_a_file_that_is_not_a_store_is_one_clear_error(tmp_path):
    store_path(tmp_path).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TalkalikeError, match="not a readable talkalike store"):
        Store.open(tmp_path)


def test_a_store_from_a_newer_talkalike_is_refused_rather_than_misread(tmp_path):
    with Store.open(tmp_path) as store:
        store.connection.execute("PRAGMA user_version = 99")
    with pytest.raises(TalkalikeError, match="newer talkalike"):
        Store.open(tmp_path)


# Property: WhatsApp exports are overlapping windows of one history. Whatever the history (with runs of identical
# messages inside a minute) and wherever the windows are cut, importing them in order stores the history exactly once,
# in order, as long as each window overlaps the previous one past the minute it starts in.
entry = st.tuples(st.integers(0, 2), st.sampled_from(["Dana", "Maya", None]), st.sampled_from(["ok", "ok", "haha", "🙂"]))


@st.composite
def history_and_windows(draw):
    steps = draw(st.lists(entry, min_size=1, max_size=60))
    minute, history = 0, []
    for gap, sender, text in steps:
        minute += gap
        kind = "system" if sender is None else "text"
        history.append(Message(T0 + timedelta(minutes=minute), sender, text, kind))
    windows, start, end = [], 0, draw(st.integers(1, len(history)))
    windows.append((start, end))
    while end < len(history):
        # the next window starts inside the previous one, in a minute before the previous one's last message
        last_minute = history[end - 1].time
        starts = [i for i in range(start, end) if history[i].time < last_minute] or [start]
        start = draw(st.sampled_from(starts))
        end = draw(st.integers(end + 1, len(history)))
        windows.append((start, end))
    return history, windows


@settings(max_examples=150, deadline=None)
@given(history_and_windows())
def test_overlapping_exports_imported_in_order_store_the_history_exactly_once(case):
    history, windows = case
    with Store(":memory:") as store:
        added = sum(store.import_export(export(history[a:b])).added for a, b in windows)
        assert added == len(history)
        assert [m for _, m in store.messages()] == history
        assert store.import_export(export(history)).added == 0
