"""The rendering contract: bubbles round-trip, the loss mask covers exactly the persona's turns, prompts open a turn."""

from copy import deepcopy

import pytest

from talkalike.template import (
    BUBBLE_SEP,
    GEMMA_TEMPLATE,
    PLAIN_TEMPLATE,
    chat_template,
    contact_line,
    join_bubbles,
    render_prompt,
    render_sample,
    split_bubbles,
    stop_strings,
)

CONVERSATION = [
    {"role": "user", "content": "Are you coming to the beach tomorrow?"},
    {"role": "assistant", "content": join_bubbles(["yesss", "haha 😂", "בטח"])},
    {"role": "user", "content": "Great, see you at eight."},
    {"role": "assistant", "content": "ok 🙈"},
]


def trained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.mask, strict=True) if m])


def test_bubbles_survive_a_round_trip_including_multiline_messages():
    messages = ["first line\nsecond line", "😂😂", "שלום, מה קורה?"]
    assert split_bubbles(join_bubbles(messages)) == messages
    assert BUBBLE_SEP.strip() not in "".join(split_bubbles(join_bubbles(messages)))


def test_the_mask_covers_exactly_the_persona_turns_and_their_end_of_turn(tiny_tokenizer):
    rendered = render_sample(CONVERSATION, tiny_tokenizer)
    assert len(rendered.mask) == len(rendered.input_ids)
    trained = trained_text(tiny_tokenizer, rendered)
    assert trained.count("<end_of_turn>") == 2
    for piece in ["yesss", "haha 😂", "בטח", "ok 🙈"]:
        assert piece in trained
    for piece in ["beach", "see you at eight", "<start_of_turn>user"]:
        assert piece not in trained


def test_all_turns_trains_every_token(tiny_tokenizer):
    rendered = render_sample(CONVERSATION, tiny_tokenizer, all_turns=True)
    assert all(rendered.mask)


RECALLED = [
    {"role": "user", "content": "how is Pita?", "memory": True},
    {"role": "assistant", "content": "pita sleeps on my laptop", "memory": True},
]


@pytest.mark.parametrize("all_turns", [False, True])
def test_recalled_turns_carry_no_loss_in_either_mode(tiny_tokenizer, all_turns):
    rendered = render_sample(RECALLED + CONVERSATION, tiny_tokenizer, all_turns=all_turns)
    trained = trained_text(tiny_tokenizer, rendered)
    assert "laptop" not in trained and "Pita" not in trained
    assert "ok 🙈" in trained and "yesss" in trained
    assert ("beach" in trained) == all_turns  # all_turns still trains the real conversation's every token
    plain = render_sample(CONVERSATION, tiny_tokenizer, all_turns=all_turns)
    assert sum(rendered.mask) == sum(plain.mask) - (1 if all_turns else 0)  # all_turns: the BOS sits in the memory


def test_the_original_layout_marks_the_persona_as_person2(tiny_tokenizer):
    rendered = render_sample(CONVERSATION, tiny_tokenizer, layout="original")
    assert rendered.text.startswith("<bos><person1>Are you coming")
    assert "<eos><person2>yesss" in rendered.text
    trained = trained_text(tiny_tokenizer, rendered)
    assert "yesss" in trained and "beach" not in trained
    assert stop_strings(tiny_tokenizer, "original") == ["<eos>"]


def test_a_prompt_ends_with_an_opened_persona_turn(tiny_tokenizer):
    text = tiny_tokenizer.decode(render_prompt(CONVERSATION[:1], tiny_tokenizer))
    assert text.endswith("<start_of_turn>model\n")
    assert stop_strings(tiny_tokenizer) == ["<end_of_turn>", "<eos>"]


def test_a_tokenizer_without_a_template_gets_gemma_turns_or_the_plain_template(tiny_tokenizer):
    from transformers import PreTrainedTokenizerFast

    gemma_like = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<eos>")
    assert gemma_like.chat_template is None
    assert chat_template(gemma_like) == GEMMA_TEMPLATE

    from tokenizers import Tokenizer, models, pre_tokenizers

    bare = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=bare, eos_token="<eos>", bos_token="<eos>")
    assert chat_template(plain) == PLAIN_TEMPLATE
    assert stop_strings(plain) == ["<eos>"]


def test_gemma_template_refuses_a_conversation_that_does_not_alternate(tiny_tokenizer):
    with pytest.raises(Exception, match="alternate"):
        render_sample([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], tiny_tokenizer)


# ---------------------------------------------------------------- the contact line (a leading system message)

SYSTEM = contact_line("Noa", ["Daniel"])
MISTRAL_V01 = (  # Mistral-7B-Instruct-v0.1's template: roles must alternate from a user turn, no system role
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def test_the_contact_line_names_the_other_side_most_active_first():
    assert SYSTEM == {"role": "system", "content": "Noa is texting with Daniel."}
    group = contact_line("Lucía", ["Ana", "Tomás", "Pablo"], group="Amigos")
    assert group["content"] == 'Lucía is in the group chat "Amigos" with Ana, Tomás and Pablo.'
    crowd = contact_line("Noa", [f"P{i}" for i in range(9)], group="Class of 2010")
    assert crowd["content"] == 'Noa is in the group chat "Class of 2010" with P0, P1, P2, P3, P4 and 4 others.'


def with_template(tokenizer, template: str):
    copy = deepcopy(tokenizer)
    copy.chat_template = template
    return copy


@pytest.fixture(params=["gemma", "plain", "original", "mistral"])
def layout_case(request, tiny_tokenizer):
    """(tokenizer, layout, what the rendered text starts with) for each way a system message is rendered."""
    return {
        "gemma": (tiny_tokenizer, "chat",
                  "<bos><start_of_turn>user\nNoa is texting with Daniel.\n\nAre you coming"),
        "plain": (with_template(tiny_tokenizer, PLAIN_TEMPLATE), "chat",
                  "<bos><|system|>\nNoa is texting with Daniel.<eos>\n<|user|>\nAre you coming"),
        "original": (tiny_tokenizer, "original", "<bos><person1>Are you coming"),
        "mistral": (with_template(tiny_tokenizer, MISTRAL_V01), "chat",
                    "<bos>[INST] Noa is texting with Daniel.\n\nAre you coming"),
    }[request.param]


@pytest.mark.parametrize("all_turns", [False, True])
def test_every_layout_renders_the_contact_line_and_never_trains_it(layout_case, all_turns):
    tokenizer, layout, opening = layout_case
    rendered = render_sample([SYSTEM, *CONVERSATION], tokenizer, layout=layout, all_turns=all_turns)
    assert rendered.text.startswith(opening)
    trained = trained_text(tokenizer, rendered)
    assert "texting" not in trained and "Daniel" not in trained
    assert "yesss" in trained and "ok 🙈" in trained and ("beach" in trained) == all_turns
    without = render_sample(CONVERSATION, tokenizer, layout=layout, all_turns=all_turns)
    if not all_turns:  # the persona's turns carry exactly the loss they carry without the line
        assert trained == trained_text(tokenizer, without)
    # the prompt at reply time holds the line too (the original layout leaves it out everywhere)
    prompt = tokenizer.decode(render_prompt([SYSTEM, CONVERSATION[0]], tokenizer, layout=layout))
    assert ("texting with Daniel" in prompt) == (layout != "original")


def test_the_original_layout_renders_a_sample_with_a_contact_line_exactly_as_without_it(tiny_tokenizer):
    with_line = render_sample([SYSTEM, *CONVERSATION], tiny_tokenizer, layout="original", all_turns=True)
    assert with_line == render_sample(CONVERSATION, tiny_tokenizer, layout="original", all_turns=True)


@pytest.mark.parametrize("all_turns", [False, True])
def test_recalled_turns_follow_the_contact_line_and_neither_carries_loss(tiny_tokenizer, all_turns):
    rendered = render_sample([SYSTEM, *RECALLED, *CONVERSATION], tiny_tokenizer, all_turns=all_turns)
    assert rendered.text.startswith("<bos><start_of_turn>user\nNoa is texting with Daniel.\n\nhow is Pita?")
    trained = trained_text(tiny_tokenizer, rendered)
    assert "texting" not in trained and "laptop" not in trained and "Pita" not in trained
    assert "ok 🙈" in trained and "yesss" in trained and ("beach" in trained) == all_turns
    assert sum(rendered.mask) == sum(render_sample(RECALLED + CONVERSATION, tiny_tokenizer, all_turns=all_turns).mask)


def test_a_template_that_rejects_the_system_role_raises_its_other_complaints_as_before(tiny_tokenizer):
    mistral = with_template(tiny_tokenizer, MISTRAL_V01)
    twice = [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for tokenizer in (mistral, tiny_tokenizer):
        with pytest.raises(Exception, match="alternate"):
            render_sample(twice, tokenizer)


def test_an_opener_prompt_under_a_template_without_a_system_role_matches_how_openers_are_trained(tiny_tokenizer):
    mistral = with_template(tiny_tokenizer, MISTRAL_V01)
    opener = [SYSTEM, {"role": "user", "content": ""}, {"role": "assistant", "content": "u there?"}]
    trained = render_sample(opener, mistral).text
    prompt = mistral.decode(render_prompt([SYSTEM], mistral))
    assert prompt == "<bos>[INST] Noa is texting with Daniel.\n\n [/INST]" and trained.startswith(prompt)
