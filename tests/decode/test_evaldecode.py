"""Eval's batched decoder (decode/batch.py): the same replies as the single stream when greedy, whatever the
batching, and the sampler (decode/sampling.py) draws from transformers' logits processors' distribution."""

import pytest

from talkalike.decode import batch as evaldecode
from talkalike.decode import engines, sampling
from talkalike.decode.config import GenerationConfig
from talkalike.decode.stream import reply, tokens
from talkalike.decode.turns import fit_prompt
from talkalike.decode.twin import Twin

HISTORIES = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "are you coming to the beach tomorrow?"}],
    [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "haha ok"},
     {"role": "user", "content": "so what time, eight or nine? I can pick you up on the way"}],
    [{"role": "user", "content": "ok"}],
    [{"role": "user", "content": "I think we should meet at the café on Dizengoff at eight."}],
    [{"role": "user", "content": "lol"}, {"role": "assistant", "content": "חחח"}, {"role": "user", "content": "?"}],
    [{"role": "user", "content": "That is a good point, let me think about it and tell you tonight"}],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def twin(tiny_model_dir, tiny_tokenizer) -> Twin:
    from transformers import AutoModelForCausalLM

    twin = Twin.of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer, layout="chat")
    twin.prepare()
    return twin


def test_greedy_replies_equal_the_single_streams_while_rows_leave_and_join_the_batch(twin, monkeypatch):
    import torch

    config = GenerationConfig(temperature=0.0, max_new_tokens=12, max_context_tokens=96)
    # A random tiny model rarely ends its turn: make a few of the tokens it writes early on stop tokens, so replies
    # end at different steps and the decoder has to drop rows and refill the batch.
    engine = engines.build("eager", twin, 128)
    free_run = [list(tokens(engine, fit_prompt(twin, h, config), 12, lambda logits, seen: logits.argmax(-1), set()))
                for h in HISTORIES[:3]]
    twin.stop_ids = twin.stop_ids | {row[min(k + 1, len(row) - 1)] for k, row in enumerate(free_run)}
    merges = []
    merge = evaldecode.Batch.merge
    monkeypatch.setattr(evaldecode.Batch, "merge",
                        lambda self, rows, new: merges.append(rows is not None) or merge(self, rows, new))

    expected = [reply(twin, h, config) for h in HISTORIES]
    got = evaldecode.decode_many(twin, HISTORIES, config, batch_size=3)

    assert got == expected
    lengths = [len(twin.tokenizer.encode("\n".join(r), add_special_tokens=False)) for r in expected]
    assert len(set(lengths)) > 1, "the premise: replies of different lengths"
    assert any(merges), "waiting prompts joined a batch that was still decoding"
    assert torch.get_num_threads() == 1


def test_a_batch_mixes_greedy_and_sampled_rows(twin):
    config = GenerationConfig(temperature=1.0, max_new_tokens=8, max_context_tokens=96, seed=3)
    greedy_config = GenerationConfig(temperature=0.0, max_new_tokens=8, max_context_tokens=96)
    greedy = [reply(twin, h, greedy_config) for h in HISTORIES[:2]]
    got = evaldecode.decode_many(twin, [HISTORIES[0], HISTORIES[0], HISTORIES[1], HISTORIES[1]], config,
                                 temperatures=[0.0, 1.0, 0.0, 1.0])
    assert [got[0], got[2]] == greedy
    again = evaldecode.decode_many(twin, [HISTORIES[0], HISTORIES[0], HISTORIES[1], HISTORIES[1]], config,
                                   temperatures=[0.0, 1.0, 0.0, 1.0])
    assert again == got, "a fixed seed gives the same samples"


@pytest.mark.parametrize("mergeable", [True, False], ids=["slot-cache", "transformers-cache"])
def test_a_prompt_asked_several_times_is_prefilled_once_and_each_copy_decodes_as_alone(twin, monkeypatch, mergeable):
    """The facts probe asks each question for a greedy and several sampled replies: one prefill per distinct prompt,
    the cache copied to every row that shares it, and each row then decodes on its own; with the batch's own cache
    layers, or transformers' (a batch that cannot merge: sequences longer than a sliding window)."""
    if not mergeable:
        monkeypatch.setattr(evaldecode.Batch, "_mergeable", lambda self, cache, window: False)
    config = GenerationConfig(temperature=0.0, max_new_tokens=10, max_context_tokens=96)
    prefilled = []
    left_pad = evaldecode.left_pad
    monkeypatch.setattr(evaldecode, "left_pad", lambda prompts, *a: prefilled.append(len(prompts)) or
                        left_pad(prompts, *a))
    histories = [HISTORIES[2], HISTORIES[4], HISTORIES[2], HISTORIES[0], HISTORIES[4], HISTORIES[2]]
    got = evaldecode.decode_many(twin, histories, config)
    assert prefilled == [3]
    assert got == [reply(twin, h, config) for h in histories]
    sampled = evaldecode.decode_many(twin, histories, GenerationConfig(temperature=1.5, max_new_tokens=10,
                                                                       max_context_tokens=96, seed=1))
    assert len({tuple(map(tuple, sampled[k])) for k in (0, 2, 5)}) > 1  # copies of one prompt sample apart


def _reference(scores, seen, config: GenerationConfig):
    """The probabilities transformers' processors give: repetition penalty, temperature, top-p, softmax."""
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    scores = RepetitionPenaltyLogitsProcessor(config.repetition_penalty)(seen[:1], scores[None].clone())
    scores = TemperatureLogitsWarper(config.temperature)(seen[:1], scores)
    if config.top_p < 1.0:
        scores = TopPLogitsWarper(config.top_p)(seen[:1], scores)
    return scores.softmax(-1)[0]


def _draw(scores, seen, config: GenerationConfig, rows: int = 4000, rounds: int = 10):
    """Empirical token frequencies from `rounds` x `rows` draws of sampling.choose on fixed logits."""
    import torch

    vocab = scores.shape[0]
    padded = -(-vocab // sampling.BLOCK) * sampling.BLOCK
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab)
    temperatures = [config.temperature] * rows
    for _ in range(rounds):
        logits = torch.full((rows, padded), float("-inf"))
        logits[:, :vocab] = scores
        drawn = sampling.choose(logits, seen.expand(rows, -1), temperatures, config, generator, vocab)
        counts += torch.bincount(drawn, minlength=vocab).float()
    return counts / counts.sum()


def _logits_and_seen(vocab: int = 700):
    import torch

    torch.manual_seed(0)
    scores = torch.randn(vocab) * 3
    top = int(scores.argmax())
    seen = torch.tensor([[5, top, top, 300, int(scores.argmin())]])  # the likeliest token among the seen ones
    return scores, seen, top


def test_sampling_draws_from_the_processors_distribution_with_the_penalty_on_seen_tokens_only():
    scores, seen, top = _logits_and_seen()  # 700 tokens: the last block is padding, which must never be drawn
    config = GenerationConfig(temperature=0.7, repetition_penalty=1.3)
    expected = _reference(scores, seen, config)
    freq = _draw(scores, seen, config)
    assert 0.5 * float((freq - expected).abs().sum()) < 0.03
    # the test can tell: without the penalty, the likeliest token would be drawn far more often
    unpenalised = _reference(scores, seen, GenerationConfig(temperature=0.7, repetition_penalty=1.0))
    assert 0.5 * float((freq - unpenalised).abs().sum()) > 0.1
    assert abs(float(freq[top] - expected[top])) < 0.015


@pytest.mark.parametrize("candidates", [sampling.TOP_P_CANDIDATES, 4])
def test_top_p_keeps_the_same_nucleus_as_transformers(monkeypatch, candidates):
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", candidates)  # 4: the nucleus is wider, so the full sort runs
    scores, seen, _ = _logits_and_seen()
    config = GenerationConfig(temperature=2.0, repetition_penalty=1.025, top_p=0.8)
    expected = _reference(scores, seen, config)
    freq = _draw(scores, seen, config)
    assert set((freq > 0).nonzero().flatten().tolist()) <= set((expected > 0).nonzero().flatten().tolist())
    assert int((expected > 0).sum()) > 4
    assert 0.5 * float((freq - expected).abs().sum()) < 0.03


def test_the_thread_count_follows_whichever_timed_faster():
    import torch

    threads = evaldecode.Threads(2)
    cost = {2: 1.0, 1: 1.7}  # an idle 2-core machine: two threads win

    def run(steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            threads.choose()
            used.append(torch.get_num_threads())
            threads.record(cost[torch.get_num_threads()])
        return used

    first = run(evaldecode.PROBE_EVERY)
    assert first[: 2 * evaldecode.PROBE_STEPS] == [2] * evaldecode.PROBE_STEPS + [1] * evaldecode.PROBE_STEPS
    assert set(first[2 * evaldecode.PROBE_STEPS:]) == {2}
    cost = {2: 4.0, 1: 1.0}  # other work takes a core: two threads wait for each other
    assert set(run(evaldecode.PROBE_EVERY)[2 * evaldecode.PROBE_STEPS:]) == {1}
    threads.restart()  # a new phase starts with the choice made so far and probes later
    assert run(evaldecode.PROBE_EVERY - 2 * evaldecode.PROBE_STEPS) == [1] * (evaldecode.PROBE_EVERY
                                                                            - 2 * evaldecode.PROBE_STEPS)
    assert run(1) == [2]
    torch.set_num_threads(2)
    fixed = evaldecode.Threads(None)
    fixed.choose()
    assert torch.get_num_threads() == 2  # None keeps torch's setting


def test_calibration_makes_a_first_choice_that_later_phases_keep(twin, monkeypatch):
    import torch

    torch.set_num_threads(2)
    threads = evaldecode.Threads(2)
    threads.calibrate(twin)
    assert threads.decided and torch.get_num_threads() == threads.best in (1, 2)
    threads.restart()
    threads.choose()
    assert torch.get_num_threads() == threads.best  # no probe at the start of a phase once a choice exists
