"""The dataset stage: samples where the persona is the assistant, windows, the time-ordered split, stats and bad input."""

import json
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from talkalike.errors import TalkalikeError
from talkalike.files import read_jsonl
from talkalike.message import Message, ParsedExport
from talkalike.prepare import dataset
from talkalike.prepare.dataset import (
    LEADING_PERSONA_TURN,
    DatasetConfig,
    PlainTokenizer,
    build_dataset,
    build_messages,
    highlight,
    windows,
)
from talkalike.prepare.segment import segment
from talkalike.store import Store
from talkalike.template import BUBBLE_SEP, render_sample, split_bubbles

T0 = datetime(2024, 3, 1, 9, 0)


def msg(minutes: float, sender: str, text: str = "hi") -> Message:
    return Message(T0 + timedelta(minutes=minutes), sender, text)


def one_conversation(messages: list[Message], chat: str = "Noa"):
    [conversation] = segment(messages, chat=chat)
    return conversation


# ---------------------------------------------------------------- samples


def test_the_persona_is_only_ever_the_assistant():
    conversation = one_conversation([
        msg(0, "Daniel", "Good morning."), msg(1, "Noa", "morning!!"), msg(2, "Noa", "coffee?"),
        msg(3, "Daniel", "Gladly."), msg(4, "Noa", "yay"),
    ])
    rows = build_messages(conversation, "Noa", group=False, dropped=dataset.Counter())
    assert [r["role"] for r in rows] == ["user", "assistant", "user", "assistant"]
    assistant = [split_bubbles(r["content"]) for r in rows if r["role"] == "assistant"]
    assert assistant == [["morning!!", "coffee?"], ["yay"]]
    user_text = " ".join(r["content"] for r in rows if r["role"] == "user")
    assert "morning!!" not in user_text and "yay" not in user_text


def test_bubble_boundaries_survive_a_round_trip():
    bubbles = ["ok", "wait", "actually no 😂", "line one\nline two"]
    conversation = one_conversation([msg(0, "Daniel", "Shall we?")] + [msg(1 + i, "Noa", b) for i, b in enumerate(bubbles)])
    rows = build_messages(conversation, "Noa", group=False, dropped=dataset.Counter())
    assert rows[1]["content"] == BUBBLE_SEP.join(bubbles)
    assert split_bubbles(rows[1]["content"]) == bubbles


def test_group_chats_keep_speaker_names_and_merge_other_speakers_into_one_user_turn():
    conversation = one_conversation([
        msg(0, "Dana", "hi all"), msg(1, "Dana", "who's in?"), msg(2, "Avi", "me"), msg(3, "Noa", "meee"),
    ], chat="Beach crew")
    rows = build_messages(conversation, "Noa", group=True, dropped=dataset.Counter())
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert split_bubbles(rows[0]["content"]) == ["Dana: hi all", "Dana: who's in?", "Avi: me"]
    assert rows[1]["content"] == "meee"  # the persona's own lines carry no name: the twin should not learn to sign


def test_two_person_chats_carry_no_name_prefix():
    conversation = one_conversation([msg(0, "Daniel", "Hello."), msg(1, "Noa", "hii")])
    rows = build_messages(conversation, "Noa", group=False, dropped=dataset.Counter())
    assert rows[0]["content"] == "Hello."


def test_a_conversation_the_persona_opens_starts_with_an_empty_user_message():
    dropped = dataset.Counter()
    conversation = one_conversation([msg(0, "Noa", "u there?"), msg(5, "Daniel", "Yes."), msg(6, "Noa", "k")])
    rows = build_messages(conversation, "Noa", group=False, dropped=dropped)
    assert rows == [{"role": "user", "content": ""}, {"role": "assistant", "content": "u there?"},
                    {"role": "user", "content": "Yes."}, {"role": "assistant", "content": "k"}]
    assert not dropped


def test_without_openers_the_persona_s_first_turn_is_dropped_and_counted():
    dropped = dataset.Counter()
    conversation = one_conversation([msg(0, "Noa", "u there?"), msg(5, "Daniel", "Yes."), msg(6, "Noa", "k")])
    rows = build_messages(conversation, "Noa", group=False, dropped=dropped, openers=False)
    assert rows == [{"role": "user", "content": "Yes."}, {"role": "assistant", "content": "k"}]
    assert dropped[LEADING_PERSONA_TURN] == 1


def test_a_conversation_where_the_persona_only_opens_yields_no_sample_without_openers():
    dropped = dataset.Counter()
    conversation = one_conversation([msg(0, "Noa", "u there?"), msg(5, "Daniel", "Yes.")])
    assert build_messages(conversation, "Noa", group=False, dropped=dropped, openers=False) == []
    assert dropped[dataset.NO_PERSONA_REPLY] == 1
    # with openers the persona's opener is the sample, and Daniel's unanswered reply is dropped
    rows = build_messages(conversation, "Noa", group=False, dropped=dropped)
    assert rows == [{"role": "user", "content": ""}, {"role": "assistant", "content": "u there?"}]
    assert dropped[dataset.TRAILING_USER_TURN] == 2


def test_windows_carry_recent_history_and_each_ends_with_the_persona():
    messages = []
    for i in range(20):
        messages += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    costs = [10] * len(messages)
    parts = windows(messages, costs, max_tokens=100, carry=40)
    assert len(parts) > 1
    for part in parts:
        assert part[0]["role"] == "user" and part[-1]["role"] == "assistant"
        assert sum(10 for _ in part) <= 100
    for before, after in pairwise(parts):
        carried = after[:4]  # 40 tokens of history = the last two (user, assistant) pairs
        assert carried == before[-4:]
    seen = {m["content"] for part in parts for m in part}
    assert seen == {m["content"] for m in messages}  # every persona reply is trained somewhere


def test_a_conversation_that_fits_is_one_window():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert windows(messages, [5, 5], max_tokens=100, carry=25) == [messages]


def test_a_single_pair_longer_than_the_budget_stays_whole():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 900},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    parts = windows(messages, [5, 300, 5, 5], max_tokens=100, carry=25)
    assert parts[0] == messages[:2] and parts[-1][-1]["content"] == "a2"


# ---------------------------------------------------------------- the pipeline on a stand-in store


def make_store(tmp_path: Path, chats: dict[str, list[Message]]) -> Store:
    """A real store in a temp folder holding these chats."""
    store = Store(tmp_path / "talkalike.db")
    if chats:
        store.import_exports([(ParsedExport(name, "whatsapp", "test", ms), name) for name, ms in chats.items()])
    return store


def daily_chat(days: int, other: str = "Daniel", start: datetime = T0) -> list[Message]:
    """One short conversation a day: the other person asks, the persona answers in two bubbles."""
    out = []
    for day in range(days):
        t = start + timedelta(days=day)
        out += [Message(t, other, f"Day {day}: how are you?"),
                Message(t + timedelta(minutes=1), "Noa", f"good haha {day}"),
                Message(t + timedelta(minutes=2), "Noa", "u?")]
    return out


def test_the_split_is_time_ordered_with_no_leak(tmp_path):
    store = make_store(tmp_path, {"Noa": daily_chat(10), "Work": daily_chat(10, other="Boss", start=T0 + timedelta(hours=5))})
    stats = build_dataset(store, DatasetConfig(persona="Noa"), tmp_path / "ds")
    train, evaluation = read_jsonl(tmp_path / "ds" / "train.jsonl"), read_jsonl(tmp_path / "ds" / "eval.jsonl")
    assert len(evaluation) == 4 and len(train) == 16  # 20 % of 20 conversations
    assert max(r["start"] for r in train) < min(r["start"] for r in evaluation)
    assert not {r["id"] for r in train} & {r["id"] for r in evaluation}
    assert stats["conversations"] == {"total": 20, "train": 16, "eval": 4, "windowed": 0, "opened_by_persona": 0}


def test_windows_of_one_conversation_all_go_to_the_same_side(tmp_path):
    long_day = []
    for i in range(40):
        long_day += [msg(i * 2, "Daniel", f"Question number {i}, please?"), msg(i * 2 + 1, "Noa", f"answer {i} lol")]
    store = make_store(tmp_path, {"Noa": daily_chat(4) + [Message(m.time + timedelta(days=10), m.sender, m.text) for m in long_day]})
    stats = build_dataset(store, DatasetConfig(persona="Noa", max_tokens=120, eval_share=0.2), tmp_path / "ds")
    train, evaluation = read_jsonl(tmp_path / "ds" / "train.jsonl"), read_jsonl(tmp_path / "ds" / "eval.jsonl")
    assert stats["conversations"]["windowed"] == 1
    assert len(evaluation) > 1 and len({r["id"].split("#")[0] for r in evaluation}) == 1
    assert not {r["id"].split("#")[0] for r in train} & {r["id"].split("#")[0] for r in evaluation}


def test_building_twice_gives_identical_files(tmp_path):
    store = make_store(tmp_path, {"Noa": daily_chat(7)})
    build_dataset(store, DatasetConfig(persona="Noa"), tmp_path / "a")
    build_dataset(store, DatasetConfig(persona="Noa"), tmp_path / "b")
    for name in ("train.jsonl", "eval.jsonl", "stats.json", "dataset.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_stats_report_style_per_speaker_and_drops(tmp_path):
    chat = daily_chat(5) + [Message(T0 + timedelta(days=20), "Daniel", "Anyone?")]
    chat.append(Message(T0 + timedelta(days=1, minutes=3), "Noa", "<Media omitted>", kind="media"))
    stats = build_dataset(make_store(tmp_path, {"Noa": chat}), DatasetConfig(persona="Noa"), tmp_path / "ds")
    noa, daniel = stats["speakers"]["Noa"], stats["speakers"]["Daniel"]
    assert noa["laughter_rate"] == 0.5 and daniel["laughter_rate"] == 0
    assert noa["messages_per_turn"]["mean"] == 2 and daniel["messages_per_turn"]["mean"] == 1
    assert noa["languages"] == {"english": 1.0}
    assert stats["dropped"]["segment"] == {"no_persona_message": 1}
    assert sum(stats["dropped"]["clean"].values()) == 1
    # per day Noa writes "good haha N" + "u?" (13 characters), Daniel "Day N: how are you?" (19)
    assert stats["persona_share"]["characters"] == round(13 / 32, 4)
    # tokens are estimated on the content, separator included: (13 + 9) * 2 // 5 + 1 = 9 against 19 * 2 // 5 + 1 = 8
    assert stats["persona_share"]["tokens"] == round(9 / 17, 4)
    saved = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert saved == stats
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["persona"] == "Noa"


def test_an_unknown_persona_lists_the_known_names(tmp_path):
    store = make_store(tmp_path, {"Noa": daily_chat(3)})
    with pytest.raises(TalkalikeError, match="known names: Noa, Daniel$"):
        build_dataset(store, DatasetConfig(persona="Nao"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_an_empty_store_asks_for_an_import_first(tmp_path):
    with pytest.raises(TalkalikeError, match="talkalike import"):
        build_dataset(make_store(tmp_path, {}), DatasetConfig(persona="Noa"), tmp_path / "ds")


def test_nothing_left_says_which_step_removed_what(tmp_path):
    # Noa only ever writes alone, hours apart: every conversation is a monologue.
    store = make_store(tmp_path, {"Noa": [msg(0, "Noa"), msg(300, "Noa"), msg(600, "Daniel", "hello?")]})
    with pytest.raises(TalkalikeError) as error:
        build_dataset(store, DatasetConfig(persona="Noa"), tmp_path / "ds")
    assert "3 messages read" in str(error.value)
    assert "2 conversations (fewer_than_2_turns)" in str(error.value)
    assert "1 conversations (no_persona_message)" in str(error.value)


def test_a_failed_write_leaves_no_half_written_dataset_and_keeps_the_old_one(tmp_path, monkeypatch):
    store = make_store(tmp_path, {"Noa": daily_chat(6)})
    out = tmp_path / "ds"
    build_dataset(store, DatasetConfig(persona="Noa"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real_dumps = json.dumps
    calls = {"n": 0}

    def failing_dumps(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(dataset.json, "dumps", failing_dumps)
    with pytest.raises(TalkalikeError, match="cannot write the dataset"):
        build_dataset(store, DatasetConfig(persona="Noa", gap_minutes=30), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["ds"]  # no temporary folder left behind


def test_an_existing_folder_that_is_not_a_dataset_is_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(TalkalikeError, match="not a dataset folder"):
        build_dataset(make_store(tmp_path, {"Noa": daily_chat(3)}), DatasetConfig(persona="Noa"), out)
    assert (out / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- inspect


def test_inspect_marks_exactly_the_persona_text_without_a_model():
    messages = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "hii\n<|msg|>\nwhat's up"}]
    tokenizer = PlainTokenizer()
    rendered = render_sample(messages, tokenizer)
    offsets = tokenizer(rendered.text, return_offsets_mapping=True)["offset_mapping"]
    shown = highlight(rendered.text, offsets, rendered.mask, colour=False)
    assert shown == "<s><|user|>\nHello.</s>\n<|assistant|>\n⟦hii\n<|msg|>\nwhat's up</s>\n⟧"


def test_inspect_highlights_with_the_models_own_template(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "haha ok"}]
    rendered = render_sample(messages, tiny_tokenizer)
    offsets = tiny_tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    shown = highlight(rendered.text, offsets, rendered.mask, colour=False)
    assert "⟦haha ok<end_of_turn>" in shown
    assert "Hello there" in shown.split("⟦")[0]


# ---------------------------------------------------------------- end to end through the CLI

PHONES = {  # as written in the chat -> its digits in international form
    "+972 52-345-6789": "972523456789",
    "054-765-4321": "972547654321",  # national Israeli format: the region comes from the chat's +972 numbers
    "+1 415 555 0132": "14155550132",
    "+44 20 7946 0958": "442079460958",
    "+49 30 901820": "4930901820",
}


def write_export(path: Path, days: int = 10) -> None:
    """A small two-person WhatsApp export in which Daniel shares phone numbers from several countries, twice each."""
    lines = ["05/01/2025, 09:00 - Messages and calls are end-to-end encrypted. Only people in this chat can read, "
             "listen to, or share them. Learn more."]
    numbers = list(PHONES) * 2
    for day in range(days):
        date = f"{5 + day:02d}/01/2025"
        number = numbers[day % len(numbers)]
        lines += [f"{date}, 10:00 - Daniel: Good morning. My new number is {number}, call me.",
                  f"{date}, 10:01 - Noa: ok saved haha",
                  f"{date}, 10:01 - Noa: 👍",
                  f"{date}, 10:05 - Daniel: Thank you."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_cli(home: Path, *args: str) -> int:
    from talkalike.cli import main

    return main(["--home", str(home), *args])


def test_phone_numbers_from_several_countries_never_reach_the_dataset(tmp_path, capsys):
    export = tmp_path / "WhatsApp Chat with Noa.txt"
    write_export(export)
    assert run_cli(tmp_path / "home", "import", str(export)) == 0
    unsaved = tmp_path / "WhatsApp Chat with +49 1512 3456789.txt"  # an unsaved contact: the chat is named by number
    write_export(unsaved, days=2)
    assert run_cli(tmp_path / "home", "import", str(unsaved)) == 0
    out = tmp_path / "ds"
    assert run_cli(tmp_path / "home", "dataset", "--me", "Noa", "--out", str(out), "--eval-share", "0.3") == 0
    text = (out / "train.jsonl").read_text(encoding="utf-8") + (out / "eval.jsonl").read_text(encoding="utf-8")
    digits = "".join(c for c in text if c.isdigit())
    for written, international in PHONES.items() | {"+49 1512 3456789": "4915123456789"}.items():
        assert written not in text
        assert international[-7:] not in digits  # not even the subscriber part, in any spelling
    # consistent: each number is written twice, and both mentions get the same placeholder
    mentions = [m["content"] for line in text.splitlines() for m in json.loads(line)["messages"] if "number" in m["content"]]
    placeholders = [c.split("number is ")[1].split(",")[0] for c in mentions]
    assert len(placeholders) == 12 and len(set(placeholders)) == 5
    assert all(p.startswith("[PHONE_") for p in placeholders)
    [label] = {json.loads(line)["chat"] for line in text.splitlines()} - {"Noa"}
    assert label.startswith("[PHONE_") and label not in placeholders  # a sixth number, its own placeholder
    stats = json.loads((out / "stats.json").read_text())
    assert stats["privacy"]["replaced"]["PHONE"] == 13  # 12 in messages, 1 chat name
    assert "1512" not in (out / "stats.json").read_text()
    assert "pseudonymised: " in capsys.readouterr().out


def test_the_cli_names_the_known_people_for_an_unknown_persona(tmp_path, capsys):
    export = tmp_path / "WhatsApp Chat with Noa.txt"
    write_export(export)
    run_cli(tmp_path / "home", "import", str(export))
    capsys.readouterr()
    assert run_cli(tmp_path / "home", "dataset", "--me", "noa", "--out", str(tmp_path / "ds")) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in error
    assert "did you mean 'Noa'?" in last and "known names: Daniel, Noa" in last  # as many messages each
    assert not (tmp_path / "ds").exists()


def test_the_cli_asks_for_an_import_on_an_empty_store(tmp_path, capsys):
    assert run_cli(tmp_path / "home", "dataset", "--me", "Noa", "--out", str(tmp_path / "ds")) == 2
    assert "talkalike import" in capsys.readouterr().err


def test_inspect_prints_samples_with_the_persona_marked(tmp_path, capsys):
    export = tmp_path / "WhatsApp Chat with Noa.txt"
    write_export(export)
    run_cli(tmp_path / "home", "import", str(export))
    run_cli(tmp_path / "home", "dataset", "--me", "Noa", "--out", str(tmp_path / "ds"))
    capsys.readouterr()
    assert run_cli(tmp_path / "home", "inspect", str(tmp_path / "ds"), "-n", "2") == 0
    shown = capsys.readouterr().out
    assert shown.count("── sample") == 2
    assert "⟦ok saved haha\n<|msg|>\n👍</s>\n⟧" in shown
    assert "⟦" not in shown.split("Good morning")[0].split("── sample 1")[1]  # the user side is never marked


def test_inspect_and_dataset_use_a_models_tokenizer_with_base(tmp_path, capsys, tiny_model_dir, tiny_tokenizer):
    export = tmp_path / "WhatsApp Chat with Noa.txt"
    write_export(export)
    home = tmp_path / "home"
    run_cli(home, "import", str(export))
    assert run_cli(home, "dataset", "--me", "Noa", "--out", str(tmp_path / "ds"), "--base", str(tiny_model_dir)) == 0
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert stats["tokens"]["counted_with"] == str(tiny_model_dir)
    first = json.loads((tmp_path / "ds" / "train.jsonl").read_text().splitlines()[0])
    assistant = [m["content"] for m in first["messages"] if m["role"] == "assistant"]
    assert stats["tokens"]["assistant"] >= len(tiny_tokenizer(assistant[0], add_special_tokens=False)["input_ids"])
    capsys.readouterr()
    assert run_cli(home, "inspect", str(tmp_path / "ds"), "-n", "1", "--base", str(tiny_model_dir)) == 0
    shown = capsys.readouterr().out
    assert "tokens," in shown and "<start_of_turn>model\n⟦ok saved haha\n<|msg|>\n👍<end_of_turn>" in shown


SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "WhatsApp Chat with Noa.txt"


def test_in_the_sample_chat_every_assistant_message_is_the_personas_and_every_user_message_is_not(tmp_path):
    home = tmp_path / "home"
    assert run_cli(home, "import", str(SAMPLE)) == 0
    assert run_cli(home, "dataset", "--me", "Noa", "--out", str(tmp_path / "ds")) == 0
    with Store(home / "talkalike.db") as store:
        written_by = {}
        for _, m in store.messages():
            written_by.setdefault(m.text.strip(), set()).add(m.sender)
    checked = 0
    for name in ("train.jsonl", "eval.jsonl"):
        for row in read_jsonl(tmp_path / "ds" / name):
            system, *messages = row["messages"]
            assert system == {"role": "system", "content": "Noa is texting with Daniel."}
            roles = [m["role"] for m in messages]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            for m in messages:
                for bubble in split_bubbles(m["content"]):
                    if bubble in written_by:  # unchanged by clean and privacy
                        checked += 1
                        expected = {"Noa"} if m["role"] == "assistant" else {"Daniel"}
                        assert written_by[bubble] & expected, (m["role"], bubble)
                        assert m["role"] == "user" or "Daniel" not in written_by[bubble]
    assert checked > 4000


def test_a_group_chat_keeps_speaker_names_beside_a_two_person_chat(tmp_path):
    group = []
    for day in range(5):
        t = T0 + timedelta(days=day)
        group += [Message(t, "Dana", "beach today?"), Message(t + timedelta(minutes=1), "Avi", "I'm in"),
                  Message(t + timedelta(minutes=2), "Noa", "yesss"), Message(t + timedelta(minutes=3), "Dana", "Noa 10am?"),
                  Message(t + timedelta(minutes=4), "Noa", "ok")]
    store = make_store(tmp_path, {"Beach crew": group, "Noa": daily_chat(5)})
    stats = build_dataset(store, DatasetConfig(persona="Noa", eval_share=0), tmp_path / "ds")
    rows = read_jsonl(tmp_path / "ds" / "train.jsonl")
    beach = [r for r in rows if r["chat"] == "Beach crew"]
    assert len(beach) == 5
    assert beach[0]["with"] == {"others": ["Dana", "Avi"], "group": "Beach crew"}  # Dana wrote more
    assert beach[0]["messages"] == [
        {"role": "system", "content": 'Noa is in the group chat "Beach crew" with Dana and Avi.'},
        {"role": "user", "content": "Dana: beach today?" + BUBBLE_SEP + "Avi: I'm in"},
        {"role": "assistant", "content": "yesss"},
        {"role": "user", "content": "Dana: Noa 10am?"},
        {"role": "assistant", "content": "ok"},
    ]
    two_person = [r for r in rows if r["chat"] == "Noa"]
    assert all(not m["content"].startswith("Daniel: ") for r in two_person for m in r["messages"])
    assert {r["messages"][0]["content"] for r in two_person} == {"Noa is texting with Daniel."}
    assert {json.dumps(r["with"]) for r in two_person} == {json.dumps({"others": ["Daniel"], "group": None})}
    assert stats["chats"] == {"two_person": 1, "group": 1}
    assert stats["contacts"] == {"Beach crew": {"conversations": 5, "persona_turns": 10},
                                 "Daniel": {"conversations": 5, "persona_turns": 5}}


def test_without_the_contact_line_rows_are_exactly_as_before(tmp_path):
    store = make_store(tmp_path, {"Noa": daily_chat(6), "Work": daily_chat(4, other="Boss")})
    build_dataset(store, DatasetConfig(persona="Noa"), tmp_path / "on")
    build_dataset(store, DatasetConfig(persona="Noa", contact=False), tmp_path / "off")
    for name in ("train.jsonl", "eval.jsonl"):
        on, off = read_jsonl(tmp_path / "on" / name), read_jsonl(tmp_path / "off" / name)
        assert all("with" not in row and row["messages"][0]["role"] == "user" for row in off)
        assert off == [{k: v for k, v in row.items() if k != "with"} | {"messages": row["messages"][1:]} for row in on]
    assert json.loads((tmp_path / "off" / "dataset.json").read_text())["contact"] is False


def test_an_unsaved_contact_s_number_never_reaches_the_contact_line(tmp_path):
    number = "+49 1512 3456789"
    chat = [Message(m.time, number if m.sender == "Daniel" else m.sender, m.text) for m in daily_chat(5)]
    store = make_store(tmp_path, {number: chat})
    build_dataset(store, DatasetConfig(persona="Noa", eval_share=0), tmp_path / "ds")
    text = (tmp_path / "ds" / "train.jsonl").read_text(encoding="utf-8")
    assert "3456789" not in text and "1512" not in text
    rows = read_jsonl(tmp_path / "ds" / "train.jsonl")
    [placeholder] = {row["chat"] for row in rows}
    assert placeholder.startswith("[PHONE_")
    assert {row["messages"][0]["content"] for row in rows} == {f"Noa is texting with {placeholder}."}
    assert "3456789" not in (tmp_path / "ds" / "stats.json").read_text()


def group_with_a_third_party(tmp_path, scrub_names: bool) -> list[dict]:
    """A group named after Maya, who writes only in another chat; one member is an unsaved number."""
    tmp_path.mkdir()
    group = []
    for day in range(4):
        t = T0 + timedelta(days=day)
        group += [Message(t, "Dana", "cake?"), Message(t + timedelta(minutes=1), "+972 52-345-6789", "Maya likes lemon"),
                  Message(t + timedelta(minutes=2), "Noa", "lemon it is")]
    store = make_store(tmp_path, {"Maya's party 🎂": group, "Maya": daily_chat(3, other="Maya")})
    build_dataset(store, DatasetConfig(persona="Noa", eval_share=0, scrub_names=scrub_names), tmp_path / "ds")
    # the group's rows: its chat field is its name as the privacy pass left it, like the contact line's
    return [r for r in read_jsonl(tmp_path / "ds" / "train.jsonl") if r["chat"] == r["with"]["group"] is not None]


def test_the_contact_line_uses_the_names_the_privacy_pass_left_and_scrubs_what_it_scrubs(tmp_path):
    rows = group_with_a_third_party(tmp_path / "kept", scrub_names=False)
    [line] = {r["messages"][0]["content"] for r in rows}
    [phone] = {r["with"]["others"][1] for r in rows}
    assert phone.startswith("[PHONE_") and line == f'Noa is in the group chat "Maya\'s party 🎂" with Dana and {phone}.'
    assert rows[0]["messages"][1]["content"].startswith(f"Dana: cake?{BUBBLE_SEP}{phone}: ")  # the same placeholder

    rows = group_with_a_third_party(tmp_path / "scrubbed", scrub_names=True)
    [line] = {r["messages"][0]["content"] for r in rows}
    assert "Maya" not in json.dumps([r["messages"] for r in rows] + [r["with"] for r in rows], ensure_ascii=False)
    [name] = {r["with"]["group"].split("'")[0] for r in rows}
    assert name.startswith("[NAME_") and name in rows[0]["messages"][1]["content"]  # as in the messages' text
    assert {r["chat"] for r in rows} == {f"{name}'s party 🎂"}
    assert line == f'Noa is in the group chat "{name}\'s party 🎂" with Dana and {phone}.'


def test_windows_keep_their_promises_for_any_conversation():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 60), min_size=1, max_size=30).map(lambda xs: xs[: len(xs) // 2 * 2] or [1, 1]),
           st.integers(20, 120), st.floats(0, 0.5))
    def check(costs, max_tokens, carry_share):
        messages = [{"role": ("user", "assistant")[i % 2], "content": str(i)} for i in range(len(costs))]
        carry = int(max_tokens * carry_share)
        parts = windows(messages, costs, max_tokens, carry)
        covered = set()
        for part in parts:
            first = int(part[0]["content"])
            assert part[0]["role"] == "user" and part[-1]["role"] == "assistant"
            assert [int(m["content"]) for m in part] == list(range(first, first + len(part)))  # contiguous
            new = [i for i in range(first, first + len(part)) if i not in covered]
            # over budget only when the one new (user, persona) pair is itself too long for what is left
            assert sum(costs[first:first + len(part)]) <= max_tokens or len(new) == 2
            covered.update(range(first, first + len(part)))
        assert covered == set(range(len(messages)))
        for before, after in pairwise(parts):
            new_start = int(after[0]["content"])
            old_end = int(before[-1]["content"]) + 1
            assert new_start <= old_end and sum(costs[new_start:old_end]) <= carry  # carried history fits its budget
            assert int(after[-1]["content"]) >= old_end  # every window trains something new

    check()


def test_the_original_layout_is_recorded_and_inspect_renders_it(tmp_path, capsys):
    export = tmp_path / "WhatsApp Chat with Noa.txt"
    write_export(export)
    run_cli(tmp_path / "home", "import", str(export))
    assert run_cli(tmp_path / "home", "dataset", "--me", "Noa", "--out", str(tmp_path / "ds"), "--layout", "original") == 0
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["layout"] == "original"
    capsys.readouterr()
    run_cli(tmp_path / "home", "inspect", str(tmp_path / "ds"), "-n", "1")
    shown = capsys.readouterr().out
    assert "<s><person1>Good morning. My new number is [PHONE_1], call me.</s><person2>⟦ok saved haha\n<|msg|>\n👍</s>⟧\n" in shown


def test_the_readme_dataset_examples_are_what_the_commands_print(tmp_path, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Dataset\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```console\n")[1:]]
    home = tmp_path / "home"
    run_cli(home, "import", str(SAMPLE))
    capsys.readouterr()
    dataset_block, inspect_block = blocks
    command, expected = dataset_block.split("\n", 1)
    assert command == "$ talkalike dataset --me Noa --out noa-ds"
    run_cli(home, "dataset", "--me", "Noa", "--out", str(tmp_path / "noa-ds"))
    assert capsys.readouterr().out.replace(str(tmp_path) + "/", "") == expected
    shown_row = section.split("```json\n", 1)[1].split("```", 1)[0]
    first_row = read_jsonl(tmp_path / "noa-ds" / "train.jsonl")[0]
    assert json.loads(shown_row.replace(",\n                 …]", "]")) == first_row | {"messages": first_row["messages"][:3]}
    command, expected = inspect_block.split("\n", 1)
    assert command == "$ talkalike inspect noa-ds -n 1 | head -12"
    run_cli(home, "inspect", str(tmp_path / "noa-ds"), "-n", "1")
    assert capsys.readouterr().out.splitlines()[:12] == expected.splitlines()


def test_spanish_and_portuguese_laughter_counts_as_laughter():
    from talkalike.prepare.dataset import LAUGHTER

    for text in ("jajaja que bueno", "JAJA", "jejeje", "kkkkk", "haha ok", "חחח"):
        assert LAUGHTER.search(text), text
    for text in ("ja", "Jaime", "el jefe", "kk", "ojala"):
        assert not LAUGHTER.search(text), text


def test_a_three_message_chat_builds_with_a_warning_that_train_will_refuse_it(tmp_path, capsys):
    export = tmp_path / "WhatsApp Chat with Maya.txt"
    export.write_text("05/01/2025, 10:00 - Maya: hi there\n05/01/2025, 10:01 - Noa: hey!\n"
                      "05/01/2025, 10:02 - Maya: how are you?\n", encoding="utf-8")
    assert run_cli(tmp_path / "home", "import", str(export)) == 0
    capsys.readouterr()
    assert run_cli(tmp_path / "home", "dataset", "--me", "Noa", "--out", str(tmp_path / "ds")) == 0
    err = capsys.readouterr().err
    assert "warning: too little to learn from: 1 message from the persona (at least 100 needed) and 1 " \
           "conversation (at least 20 needed)" in err
    assert "refuses this dataset without --force" in err


def test_the_sample_chat_is_enough_to_learn_from():
    from talkalike.prepare.dataset import too_little_data

    assert too_little_data(3017, 307) is None  # the sample chat (README, "The sample chats")
    assert too_little_data(99, 307) and too_little_data(3017, 19)
