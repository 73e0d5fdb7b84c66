"""The rendering contract: bubbles round-trip, the loss mask covers exactly the persona's turns, prompts open a turn."""

import pytest

from talkalike.template import (
    BUBBLE_SEP,
    GEMMA_TEMPLATE,
    PLAIN_TEMPLATE,
    chat_template,
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
