"""Decoding stays in character: no run of tokens twice in a reply, no more messages than the persona sends."""

import torch

from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Sampler, block_repeats
from talkalike.decode.turns import split_reply
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
