"""The ranking measures (R@1 of 10, context identification) and the equal-error rate on hand-made inputs with known
answers, and the model scorer against a direct forward of the tiny model."""

import random
import zlib

import pytest

from talkalike.evaluate import fidelity, metrics
from talkalike.evaluate.evaluate import HeldOutTurn, turn_text
from talkalike.template import join_bubbles, render_sample

TOPICS = ["beach", "pizza", "exam", "concert", "scooter", "dentist", "train", "birthday", "rain", "movie", "gym",
          "market", "flight", "cat", "job", "party", "coffee", "bike", "doctor", "salad"]


def _turns(rows: int, per_row: int = 2, echo: bool = True) -> list[HeldOutTurn]:
    """Conversations, each about its own word; the persona's reply repeats that word when `echo`."""
    turns = []
    for r in range(rows):
        topic = TOPICS[r % len(TOPICS)] + "xyzwvutsrq"[r // len(TOPICS)]  # letters only: words() drops digits
        context = []
        for k in range(per_row):
            context = context + [{"role": "user", "content": f"what about the {topic} thing {k}?"}]
            real = [f"the {topic} yes", f"ok {k}"] if echo else [f"sure {r}-{k}"]
            turns.append(HeldOutTurn(r, len(context), context, real))
            context = context + [{"role": "assistant", "content": join_bubbles(real)}]
    return turns


def _overlap(context: list[dict], candidate: list[str]) -> float:
    """Rewards copying: the share of the candidate's words found in the last message of the context."""
    seen = set(metrics.words(context[-1]["content"]))
    said = metrics.words(" ".join(candidate))
    return sum(w in seen for w in said) / max(len(said), 1)


def _noise(context: list[dict], candidate: list[str]) -> float:
    """A score that depends on the pair only through a hash: no preference for the right pairing."""
    return zlib.crc32((context[-1]["content"] + "|" + turn_text(candidate)).encode()) / 2**32


def test_a_scorer_that_rewards_copying_the_context_ranks_echoing_replies_first():
    result = fidelity.next_reply_ranking(_turns(30), fidelity.one_at_a_time(_overlap))
    assert result["n"] == 60 and result["chance"] == pytest.approx(0.1)
    assert result["r@1"] >= 0.95
    assert result["interval"][0] > 0.8


def test_a_constant_scorer_sits_exactly_at_chance():
    result = fidelity.next_reply_ranking(_turns(30), fidelity.one_at_a_time(lambda context, candidate: 1.0))
    assert result["r@1"] == pytest.approx(0.1)  # ties at the top share the credit
    low, high = result["interval"]
    assert low <= 0.1 <= high


def test_a_scorer_blind_to_the_pairing_ranks_near_chance():
    result = fidelity.next_reply_ranking(_turns(150, per_row=2), fidelity.one_at_a_time(_noise))
    low, high = result["interval"]
    assert low <= 0.1 <= high and result["n"] == 300


def test_distractors_come_from_other_conversations_and_never_repeat_the_real_reply():
    turns = _turns(40, echo=False)
    # the same text in two conversations: it must never be a distractor for itself
    turns[0] = HeldOutTurn(0, 1, turns[0].context, ["same"])
    turns[10] = HeldOutTurn(5, 1, turns[10].context, ["same"])
    row_of = {turn_text(t.real): t.row for t in turns if t.real != ["same"]}
    seen = []

    def record(pairs):
        seen.extend(pairs)
        return [0.0] * len(pairs)

    fidelity.next_reply_ranking(turns, record, seed=3)
    assert len(seen) == 10 * len(turns)
    for k, turn in enumerate(turns):
        group = seen[10 * k: 10 * k + 10]
        assert group[0][1] == turn.real and all(context is turn.context for context, _ in group)
        others = [candidate for _, candidate in group[1:]]
        assert len({turn_text(c) for c in others}) == 9
        assert turn.real not in others
        assert all(row_of[turn_text(c)] != turn.row for c in others if c != ["same"])
    # deterministic: the same seed draws the same distractors, another seed others
    again = []
    fidelity.next_reply_ranking(turns, lambda pairs: again.extend(pairs) or [0.0] * len(pairs), seed=3)
    other = []
    fidelity.next_reply_ranking(turns, lambda pairs: other.extend(pairs) or [0.0] * len(pairs), seed=4)
    assert again == seen and other != seen


def test_a_small_held_out_set_ranks_against_fewer_candidates_and_says_so():
    turns = _turns(3)  # 2 other conversations x 2 turns: 4 distractors at most
    result = fidelity.next_reply_ranking(turns, fidelity.one_at_a_time(lambda context, candidate: 1.0))
    assert result["chance"] == pytest.approx(0.2) and result["r@1"] == pytest.approx(0.2)


def test_replies_that_echo_their_context_identify_it_and_a_constant_reply_sits_at_chance():
    turns = _turns(150)
    score = fidelity.one_at_a_time(lambda context, candidate: _overlap(context, candidate) + _noise(context, []) / 10)
    result = fidelity.context_identification(turns, {"echoing": [t.real for t in turns],
                                                     "constant": [["ok sure"] for _ in turns]}, score)
    echoing, constant = result["echoing"], result["constant"]
    assert echoing["rate"] >= 0.95 and echoing["chance"] == pytest.approx(0.1)
    low, high = constant["interval"]
    assert low <= 0.1 <= high and constant["n"] == 300


def test_context_identification_draws_rival_contexts_from_other_conversations_the_same_for_every_set():
    turns = _turns(20)
    seen = []
    fidelity.context_identification(turns, {"real": [t.real for t in turns], "twin": [["ok"] for _ in turns]},
                                    lambda pairs: seen.extend(pairs) or [0] * len(pairs))
    assert len(seen) == 2 * 10 * len(turns)
    row_of = {id(t.context): t.row for t in turns}
    for k, turn in enumerate(turns):
        group = seen[10 * k: 10 * k + 10]
        assert group[0][0] is turn.context and all(reply is turn.real for _, reply in group)
        assert all(row_of[id(context)] != turn.row for context, _ in group[1:])
        assert len({id(context) for context, _ in group}) == 10
        twin_group = seen[10 * (len(turns) + k): 10 * (len(turns) + k) + 10]
        assert [c for c, _ in twin_group] == [c for c, _ in group] and all(r == ["ok"] for _, r in twin_group)


def test_equal_error_rate_is_zero_when_separable_and_about_half_when_the_classes_look_alike():
    assert metrics.equal_error_rate([1] * 50 + [0] * 50, [0.9] * 50 + [0.1] * 50) == 0.0
    rng = random.Random(0)
    scores = [rng.random() for _ in range(4000)]
    assert metrics.equal_error_rate([1, 0] * 2000, scores) == pytest.approx(0.5, abs=0.03)
    # overlapping normals one standard deviation apart: EER = Phi(-0.5) = 0.309
    shifted = [rng.gauss(1, 1) for _ in range(4000)] + [rng.gauss(0, 1) for _ in range(4000)]
    assert metrics.equal_error_rate([1] * 4000 + [0] * 4000, shifted) == pytest.approx(0.309, abs=0.02)


def test_the_real_vs_generated_classifier_is_rarely_fooled_by_another_style_and_often_by_the_same():
    real = [f"haha ok {i} 😂 see u" for i in range(40)]
    formal = [f"Good afternoon. I will arrive at {i} o'clock, if that suits you." for i in range(40)]
    assert metrics.fooled_rate_at_equal_error(real, formal) < 0.05
    rng = random.Random(1)
    pool = [" ".join(rng.choice(["haha", "ok", "sure", "lol", "yes", "no", "😂", "see u"]) for _ in range(4))
            for _ in range(200)]
    assert 0.3 < metrics.fooled_rate_at_equal_error(pool[0::2], pool[1::2]) < 0.7


# --- the model scorer on the tiny model ---------------------------------------------------------------------------


@pytest.fixture
def tiny_twin(tiny_tokenizer, one_torch_thread):
    from conftest import build_tiny_model

    from talkalike.decode.twin import Twin

    model = build_tiny_model(len(tiny_tokenizer)).eval()
    model.config.final_logit_softcapping = 5.0  # so the scorer's softcap path is checked against the model's own
    return Twin.of(model, tiny_tokenizer)


HISTORY = [{"role": "user", "content": "hey what's up?"}, {"role": "assistant", "content": "haha ok"},
           {"role": "user", "content": "see you at the beach"}]


def _direct(twin, history: list[dict], reply: list[str]) -> float:
    """Mean log-probability of the reply's turn tokens from one plain forward over the whole rendered sample."""
    import torch

    rendered = render_sample(history + [{"role": "assistant", "content": join_bubbles(reply)}], twin.tokenizer)
    start = len(rendered.mask) - rendered.mask[::-1].index(0)  # the reply's turn: the mask's trailing run of ones
    last = range(start, len(rendered.mask))
    ids = torch.tensor([rendered.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(twin.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logp[p - 1, rendered.input_ids[p]]) for p in last) / len(last)


def test_the_model_scorer_is_the_mean_log_likelihood_of_the_reply_tokens(tiny_twin):
    replies = [["ok", "sure"], ["lol pita the cat broke my scooter again 🙈"], ["שלום"], []]
    # one group of four candidates (shared prefill, padded rows) and each candidate alone agree with a plain forward
    score = fidelity.model_scorer(tiny_twin, use_adapter=False, rows=3)
    together = score([(HISTORY, r) for r in replies])
    alone = [score([(HISTORY, r)])[0] for r in replies]
    direct = [_direct(tiny_twin, HISTORY, r) for r in replies]
    assert together == pytest.approx(direct, abs=1e-4)
    assert alone == pytest.approx(direct, abs=1e-4)
    assert len(set(round(d, 4) for d in direct)) == len(direct)  # different replies score differently


def test_the_model_scorer_truncates_long_replies_and_cuts_the_history_as_generation_does(tiny_twin):
    long_reply = ["hey what's up? haha ok 😂 see you at the beach " * 4]
    score = fidelity.model_scorer(tiny_twin, use_adapter=False, max_context_tokens=60, max_candidate_tokens=8)
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.turns import fit_messages

    turns = fit_messages(tiny_twin, HISTORY * 3, GenerationConfig(max_context_tokens=60, max_new_tokens=8))
    assert turns[0]["role"] == "user" and turns[-1] == HISTORY[-1] and len(turns) < 9
    ids, start = fidelity.candidate_tokens(tiny_twin.tokenizer, "chat", turns, long_reply, 8)
    assert len(ids) - start == 8
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(tiny_twin.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = sum(float(logp[p - 1, ids[p]]) for p in range(start, len(ids))) / 8
    assert score([(HISTORY * 3, long_reply)]) == pytest.approx([expected], abs=1e-4)
