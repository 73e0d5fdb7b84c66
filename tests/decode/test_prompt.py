"""The reply prompt is built as training built its samples: the contact line, recalled exchanges, the conversation."""

import dataclasses

import pytest
from conftest import build_tiny_model

from talkalike.decode.config import GenerationConfig
from talkalike.decode.turns import fit_prompt, prompt_messages
from talkalike.decode.twin import Twin
from talkalike.memory import Memory


@pytest.fixture(scope="module")
def twin(tiny_tokenizer, tmp_path_factory):
    rows = [
        {"messages": [{"role": "user", "content": "how is Pita the cat?"},
                      {"role": "assistant", "content": "pita sleeps on my laptop"}], "start": "2025-01-01T10:00"},
        {"messages": [{"role": "user", "content": "where do you work now?"},
                      {"role": "assistant", "content": "studio kav"}], "start": "2025-01-02T10:00"},
    ]
    memory = Memory.build(rows, tmp_path_factory.mktemp("run") / "memory.db")
    return Twin.of(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, persona="Noa", memory=memory,
                   contacts=["Daniel", "Mom"])


def text_of(twin, history, config):
    return twin.tokenizer.decode(fit_prompt(twin, history, config))


def test_the_prompt_opens_with_the_contact_line_then_the_recalled_exchange_then_the_message(twin):
    text = text_of(twin, [{"role": "user", "content": "is the cat ok?"}], GenerationConfig())
    assert text.index("Noa is texting with Daniel.") < text.index("pita sleeps") < text.index("is the cat ok?")
    assert "studio kav" not in text  # an exchange sharing no word with the message is not recalled


def test_as_name_chooses_whom_the_twin_is_talking_to(twin):
    config = GenerationConfig(contact="Mom")
    assert "Noa is texting with Mom." in text_of(twin, [{"role": "user", "content": "hi"}], config)


def test_memory_and_the_contact_line_can_be_turned_off(twin):
    plain = Twin.of(twin.model, twin.tokenizer, persona="Noa")
    history = [{"role": "user", "content": "is the cat ok?"}]
    off = text_of(twin, history, GenerationConfig(memories=0))
    assert "pita sleeps" not in off and "texting with" in off
    assert "texting with" not in text_of(plain, history, GenerationConfig())


def test_a_held_out_rows_own_system_line_is_kept(twin):
    history = [{"role": "system", "content": "Noa is in the group chat \"Amigos\" with Ana."},
               {"role": "user", "content": "where do you work?"}]
    system, recalled, turns = prompt_messages(twin, history, GenerationConfig())
    assert system == history[:1] and turns == history[1:]
    assert any("studio kav" in t["content"] for t in recalled)


def test_when_the_window_is_short_old_turns_go_before_memories_and_the_message_stays(twin):
    history = []
    for i in range(20):
        history += [{"role": "user", "content": f"question {i} about nothing"}, {"role": "assistant", "content": "ok"}]
    history.append({"role": "user", "content": "how is the cat Pita?"})
    config = dataclasses.replace(GenerationConfig(), max_context_tokens=160, max_new_tokens=40)
    text = text_of(twin, history, config)
    assert "how is the cat Pita?" in text and "pita sleeps" in text and "Noa is texting with Daniel." in text
    assert "question 0 " not in text


def test_the_exchange_before_the_message_outranks_recalled_ones_in_a_tight_window(twin):
    history = [{"role": "user", "content": "question 1 about the weekend plans"},
               {"role": "assistant", "content": "lets do the beach"},
               {"role": "user", "content": "how is the cat Pita?"}]
    without_memory = len(fit_prompt(twin, history, GenerationConfig(memories=0)))
    assert "pita sleeps" in text_of(twin, history, GenerationConfig())  # a roomy window holds both
    config = GenerationConfig(max_context_tokens=without_memory + 40 + 2, max_new_tokens=40)
    text = text_of(twin, history, config)
    assert "lets do the beach" in text and "question 1" in text and "pita sleeps" not in text
