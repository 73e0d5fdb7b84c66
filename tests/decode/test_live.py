"""Serve's continuous batching (talkalike/decode/live.py): replies decoded together read exactly as they read alone,
each with its own sampling settings; the lone reply hands over to the batch; a reader that leaves frees its row; an
error reaches every reader. A tiny model built from a config, no downloads."""

import dataclasses
import itertools
import threading
import time

import pytest
from conftest import build_tiny_model, make_run

from talkalike.decode.live import Live
from talkalike.decode.stream import Usage, stream_reply
from talkalike.decode.turns import collect_messages
from talkalike.decode.twin import Twin

WORDS = ["hey", "what's up at the beach", "שלום מה קורה", "ok see you at eight", "lol pita the cat", "Hello there"]


@pytest.fixture(scope="module")
def twin(tiny_tokenizer):
    import torch

    torch.set_num_threads(1)
    return Twin.of(build_tiny_model(len(tiny_tokenizer)).eval(), tiny_tokenizer, name="noa", persona="Noa")


@pytest.fixture(params=[False, True], ids=["hand-then-step", "step-then-hand"])
def order(request, monkeypatch):
    """Both orders of a batched step: each reader gets its token before the next step (a CPU's), or after the next
    step is launched (a GPU's, Live.launch_first); both run here on the CPU."""
    init = Live.__init__

    def made(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.launch_first = request.param

    monkeypatch.setattr(Live, "__init__", made)
    return request.param


def ask(words: str) -> list[dict]:
    return [{"role": "user", "content": words}]


def greedy(twin, **overrides):
    return dataclasses.replace(twin.defaults, **({"temperature": 0.0, "max_new_tokens": 40, "max_messages": 0}
                                                  | overrides))


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def together(twin, live, requests, joining: int | None = None):
    """Each (history, config, use_adapter) answered through `live`: the first starts alone and has shown text
    before the others ask, so they find it decoding and it hands over to their batch once `joining` replies (all by
    default) are in. Messages and usage each."""
    results = [None] * len(requests)

    def answer(i, first=None):
        history, config, use_adapter = requests[i]
        usage = Usage()
        events = stream_reply(twin, history, config, use_adapter, usage, draw=live.draw)
        head = [next(events)] if first is not None else []
        if first is not None:
            first.set()
            wait_until(lambda: live.running() == (joining or len(requests)))  # they wait for this one to hand over
        results[i] = (collect_messages(itertools.chain(head, events)), usage)

    started = threading.Event()
    lead = threading.Thread(target=answer, args=(0, started))
    lead.start()
    started.wait(30)
    others = [threading.Thread(target=answer, args=(i,)) for i in range(1, len(requests))]
    for thread in others:
        thread.start()
    for thread in [lead, *others]:
        thread.join(120)
    wait_until(live.idle)
    return results


def alone(twin, history, config, use_adapter=True):
    usage = Usage()
    return collect_messages(stream_reply(twin, history, config, use_adapter, usage)), usage


def test_greedy_replies_decoded_together_read_exactly_as_alone(twin, order):
    requests = [(ask(words), greedy(twin), True) for words in WORDS[:4]]
    live = Live(twin, rows=8)
    batched = together(twin, live, requests)
    assert live.widest == 4  # the four were one batch, not one after the other
    for (history, config, _), (messages, usage) in zip(requests, batched, strict=True):
        expected, expected_usage = alone(twin, history, config)
        assert messages == expected and messages[0]
        assert usage == expected_usage


def test_each_reply_keeps_its_own_sampling_settings_in_one_batch(twin, order):
    settings = [dict(temperature=1.0, seed=7, max_new_tokens=30), dict(temperature=0.7, top_p=0.8, seed=3),
                dict(temperature=0.0, repetition_penalty=1.5, max_new_tokens=5),
                dict(temperature=1.3, seed=11, no_repeat_ngram=0, max_new_tokens=25)]
    requests = [(ask(words), greedy(twin, **overrides), True) for words, overrides in zip(WORDS, settings, strict=False)]
    live = Live(twin, rows=8)
    batched = together(twin, live, requests)
    assert live.widest == 4
    for (history, config, _), (messages, usage) in zip(requests, batched, strict=True):
        assert (messages, usage) == alone(twin, history, config)  # same seed, same draws, batched or not
        assert usage.completion_tokens <= config.max_new_tokens
    assert batched[2][1].completion_tokens == 5 and batched[2][1].finish_reason == "length"
    # and the settings matter: the same request with another seed reads otherwise
    reseeded = alone(twin, requests[0][0], dataclasses.replace(requests[0][1], seed=8))
    assert reseeded[0] != batched[0][0]


def test_base_and_tuned_replies_decode_side_by_side_as_they_would_alone(tmp_path, tiny_tokenizer, tiny_model_dir,
                                                                       one_torch_thread):
    import torch

    run = make_run(tmp_path / "run", tiny_model_dir, tiny_tokenizer, name="noa")
    # fp32: batched rows then read exactly as alone (serve takes bf16 on a CPU that computes it natively, where a
    # batch of rows rounds differently from one row)
    twin = Twin.from_run(run, tmp_path, dtype=torch.float32)
    requests = [(ask(words), greedy(twin), use_adapter) for words, use_adapter
                in zip(WORDS, [True, False, True, False, False], strict=False)]
    live = Live(twin, rows=8)
    batched = together(twin, live, requests)
    assert live.widest >= 2
    for (history, config, use_adapter), result in zip(requests, batched, strict=True):
        assert result == alone(twin, history, config, use_adapter)
    tuned, base = alone(twin, ask("hey"), greedy(twin), True), alone(twin, ask("hey"), greedy(twin), False)
    assert tuned != base  # the switch is real: the adapter changes the reply


def test_a_reader_that_leaves_mid_reply_frees_its_row_and_the_others_finish(twin, order):
    live = Live(twin, rows=8)
    config = greedy(twin)
    long = dataclasses.replace(config, max_new_tokens=100)
    leaving = stream_reply(twin, ask(WORDS[0]), long, draw=live.draw)
    next(leaving)  # decoding alone
    results = {}
    others = [threading.Thread(target=lambda w=w: results.update({w: collect_messages(
        stream_reply(twin, ask(w), config, draw=live.draw))})) for w in WORDS[1:3]]
    for thread in others:
        thread.start()
    wait_until(lambda: live.running() == 3)
    next(leaving)  # hands over to the batch and reads one batched token's text
    leaving.close()
    for thread in others:
        thread.join(120)
    wait_until(live.idle)
    assert live.widest == 3
    assert results == {w: alone(twin, ask(w), config)[0] for w in WORDS[1:3]}
    assert not live.lanes and not live.held and live.solo is None


def test_an_error_in_the_batch_reaches_every_reader_and_the_next_reply_works(twin, order, monkeypatch):
    live = Live(twin, rows=8)
    config = greedy(twin)
    first = stream_reply(twin, ask(WORDS[0]), config, draw=live.draw)
    next(first)
    live._prepare()
    batch = live.batches[True][0]
    real_step = batch.step
    monkeypatch.setattr(batch, "step", lambda rows: (_ for _ in ()).throw(RuntimeError("out of memory")))
    errors = []

    def read(events):
        try:
            list(events)
        except RuntimeError as error:
            errors.append(str(error))

    second = threading.Thread(target=read, args=(stream_reply(twin, ask(WORDS[1]), config, draw=live.draw),))
    second.start()
    wait_until(lambda: live.running() == 2)
    read(first)
    second.join(60)
    assert errors == ["out of memory", "out of memory"]
    wait_until(live.idle)
    monkeypatch.setattr(batch, "step", real_step)
    assert together(twin, live, [(ask(w), config, True) for w in WORDS[:2]])[1][0] == alone(twin, ask(WORDS[1]),
                                                                                           config)[0]


def test_a_reply_too_long_for_the_sliding_window_waits_and_runs_alone(twin):
    live = Live(twin, rows=8)
    config = greedy(twin)
    # The tiny model's window is 128 tokens: a 200-token reply cannot share a batch whose cache keeps every token.
    long = dataclasses.replace(config, max_new_tokens=200)
    results = together(twin, live, [(ask(WORDS[0]), config, True), (ask(WORDS[1]), config, True),
                                    (ask(WORDS[2]), long, True)], joining=2)
    assert live.widest == 2
    assert results[2] == alone(twin, ask(WORDS[2]), long)


def test_on_slots_one_step_for_every_row_gives_each_reply_its_alone_tokens(tiny_tokenizer, order, monkeypatch):
    """slots.py, the GPU's batch, runs eagerly here: a Llama-family model, rows joining at their own positions."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from talkalike.decode.slots import Slots

    config = AutoConfig.for_model("llama", vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                  max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    llama = Twin.of(model, tiny_tokenizer, name="noa", persona="Noa")
    made = []
    monkeypatch.setattr(Live, "_backend", lambda self, twin, bound: made.append(Slots(twin.model, self.size, 128))
                        or made[-1])
    live = Live(llama, rows=4)
    settings = [{}, {"temperature": 1.0, "seed": 5}, {"max_new_tokens": 7}, {"repetition_penalty": 1.6}]
    requests = [(ask(words), greedy(llama, **overrides), True) for words, overrides in zip(WORDS, settings,
                                                                                          strict=False)]
    batched = together(llama, live, requests)
    assert live.widest == 4 and isinstance(live.batches[True][0], Slots)
    for (history, config, _), result in zip(requests, batched, strict=True):
        assert result == alone(llama, history, config)
    assert sorted(made[0].free) == [0, 1, 2, 3]  # every slot free again
    # a second round reuses the slots, stale caches and all
    assert together(llama, live, requests[::-1]) == batched[::-1]


def test_rows_that_differ_in_seed_and_temperature_draw_in_one_sampler_call_a_step(twin):
    settings = [dict(temperature=1.0, seed=7), dict(temperature=0.7, seed=3), dict(temperature=1.3, seed=11),
                dict(temperature=0.0)]
    requests = [(ask(words), greedy(twin, max_new_tokens=30, **overrides), True)
                for words, overrides in zip(WORDS, settings, strict=False)]
    live = Live(twin, rows=4)
    steps, step = [], live._step
    live._step = lambda use_adapter: steps.append(use_adapter) or step(use_adapter)
    batched = together(twin, live, requests)
    for (history, config, _), result in zip(requests, batched, strict=True):
        assert result == alone(twin, history, config)
    assert live.widest == 4 and live.together.calls == len(steps)  # one draw a step for all four rows


def test_a_batch_of_tuned_replies_never_switches_the_adapter_off(twin, monkeypatch):
    # Entering twin.adapter(False) walks every LoRA layer (18 ms a step on the embedded model's CPU): an empty base
    # lane must not pay it at every step
    switched = []
    adapter = twin.adapter
    monkeypatch.setattr(twin, "adapter", lambda use_adapter=True: switched.append(use_adapter) or adapter(use_adapter))
    live = Live(twin, rows=4)
    requests = [(ask(words), greedy(twin), True) for words in WORDS[:3]]
    together(twin, live, requests)
    assert live.widest == 3 and switched and False not in switched
