"""Decoding stays in character: no run of tokens twice in a reply, no more messages than the persona sends, no words
the persona never wrote."""

import dataclasses

import pytest
import torch
from conftest import build_tiny_model

from talkalike.decode.batch import decode_many
from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Sampler, block_repeats
from talkalike.decode.stream import reply
from talkalike.decode.turns import fit_prompt, split_reply, vocabulary
from talkalike.decode.twin import Twin
from talkalike.memory import Memory
from talkalike.template import join_bubbles


def test_a_token_that_would_repeat_a_run_of_three_is_blocked_and_only_that_one():
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([5, 6, 7, 1, 5, 6]), 3, torch.tensor([], dtype=torch.long))
    assert logits[7] == float("-inf")
    assert torch.isfinite(logits[[0, 1, 2, 3, 4, 5, 6, 8, 9]]).all()


def test_a_token_banned_by_one_run_stays_banned_whatever_other_runs_say():
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([5, 6, 7, 5, 6, 8, 5, 6]), 3, torch.tensor([], dtype=torch.long))
    assert logits[7] == float("-inf") and logits[8] == float("-inf")


def test_runs_through_the_message_separator_are_never_blocked():
    separator = torch.tensor([9])
    logits = torch.zeros(10)
    block_repeats(logits, torch.tensor([1, 9, 2, 3, 1, 9]), 3, separator)  # "x <sep> y ... x <sep>": y may start again
    assert torch.isfinite(logits).all()
    block_repeats(logits, torch.tensor([2, 3, 4, 9, 2, 3]), 3, separator)
    assert logits[4] == float("-inf")


def test_greedy_sampling_takes_the_next_best_token_when_the_best_repeats():
    config = GenerationConfig(temperature=0, repetition_penalty=1.0, no_repeat_ngram=3)
    sampler = Sampler(config, vocab=10, rows=1, device="cpu", separator_ids=[9])
    logits = torch.arange(10, dtype=torch.float32)[None].flip(-1)  # token 0 best, then 1, ...
    reply = torch.tensor([3, 4, 0, 3, 4])
    assert int(sampler(logits, reply[None], [0.0], [reply])) == 1
    assert int(sampler(logits, reply[None], [0.0])) == 0  # without the reply, nothing is blocked
    off = Sampler(GenerationConfig(temperature=0, repetition_penalty=1.0, no_repeat_ngram=0), 10, 1, "cpu")
    assert int(off(logits, reply[None], [0.0], [reply])) == 0


def test_the_message_cap_ends_the_turn_at_the_separator_after_the_last_allowed_message():
    text = join_bubbles(["one", "two", "three", "four"])
    assert split_reply(text, [], max_messages=2) == ["one", "two"]
    assert split_reply(text, [], max_messages=0) == ["one", "two", "three", "four"]
    assert split_reply(text, [], max_messages=9) == ["one", "two", "three", "four"]


def test_the_persona_cap_is_the_90th_percentile_of_their_messages_per_turn(tmp_path):
    counts = [1] * 50 + [2] * 30 + [3] * 15 + [7] * 5
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": join_bubbles(["m"] * n)}], "start": f"{i:04d}"}
            for i, n in enumerate(counts)]
    assert Memory.build(rows, tmp_path / "memory.db").messages_per_turn(0.9) == 3


@pytest.fixture(scope="module")
def remembering_twin(tiny_tokenizer, tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": join_bubbles(["haha ok", "sure 😂"])}], "start": f"{i:04d}"}
            for i in range(3)]
    memory = Memory.build(rows, tmp_path_factory.mktemp("run") / "memory.db")
    twin = Twin.of(build_tiny_model(len(tiny_tokenizer), seed=5), tiny_tokenizer, persona="Noa", memory=memory)
    twin.prepare(torch.float32)
    return twin


HISTORY = [{"role": "user", "content": "Hello there, how are you today?"}]


def test_a_reply_uses_only_the_personas_own_tokens_and_the_conversations(remembering_twin, monkeypatch):
    import talkalike.decode.stream as stream

    twin = remembering_twin
    config = GenerationConfig(temperature=1.0, max_new_tokens=24, seed=3, memories=0, max_messages=0, own_words=True)
    prompt = fit_prompt(twin, HISTORY, config)
    allowed = set(vocabulary(twin, [prompt], config))
    assert set(twin.tokenizer.encode("haha ok", add_special_tokens=False)) <= allowed
    assert set(prompt) <= allowed and len(allowed) < len(twin.tokenizer) / 2
    drawn, loop = [], stream.tokens

    def recording(*args, **kwargs):
        for token in loop(*args, **kwargs):
            drawn.append(token)
            yield token

    monkeypatch.setattr(stream, "tokens", recording)
    reply(twin, HISTORY, config)
    assert drawn and set(drawn) <= allowed
    free = dataclasses.replace(config, own_words=False)
    assert vocabulary(twin, [prompt], free) is None
    drawn.clear()
    reply(twin, HISTORY, free)  # a random tiny model left to the whole vocabulary leaves the persona's words at once
    assert not set(drawn) <= allowed


def test_batched_replies_from_the_restricted_head_match_the_single_streams_masked_ones(remembering_twin):
    """Eval's batches compute only the allowed rows of the head; the chat masks the whole vocabulary: same tokens."""
    twin = remembering_twin
    config = GenerationConfig(temperature=0, max_new_tokens=16, memories=0, max_messages=0, repetition_penalty=1.1,
                              own_words=True)
    histories = [HISTORY, [{"role": "user", "content": "ok sure coming"}]]
    assert decode_many(twin, histories, config, batch_size=2) == [reply(twin, h, config) for h in histories]


def test_a_twin_without_memory_keeps_the_whole_vocabulary(tiny_tokenizer):
    twin = Twin.of(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer)
    assert vocabulary(twin, [[5, 6]], GenerationConfig(own_words=True)) is None
