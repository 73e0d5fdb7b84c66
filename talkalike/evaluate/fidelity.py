"""Does the twin answer the message in front of it? Two ranking measures on held-out conversations.

1. Next-reply ranking, R@1 of 10: the response-selection measure of dialogue research (Lowe et al. 2015, "The Ubuntu
   Dialogue Corpus", 1-in-10 Recall@k). For a held-out context, the persona's real next turn and 9 distractors (the
   persona's own turns from OTHER held-out conversations) are scored by their log-likelihood per token given the
   context; R@1 is how often the real turn comes first. Chance is 10 %. Each model scores with itself (tuned and base
   separately): a model that follows the conversation prefers the reply that fits it, whatever its style.
2. Context identification: a reply (real, tuned or base) is scored under 10 held-out contexts, its own and 9 from
   other conversations; how often its own context comes first. One fixed judge scores every set, the BASE model
   (adapter off), so the sets are compared on one scale; the twin's rate is then read as a share of the real replies'.

Scores come from a `score(pairs) -> list[float]` callable over (context, candidate) pairs, so the ranking logic is
pure and the tests hand it known scorers; `model_scorer` is the real one. Ties at the top count fractionally (the
expected value of breaking them at random), so a scorer that cannot tell candidates apart sits exactly at chance.

    from talkalike.evaluate import fidelity
    fidelity.next_reply_ranking(turns, fidelity.model_scorer(twin, use_adapter=True))
"""

import json
import random
from collections.abc import Callable

from talkalike.decode.engines.eager import cache_kwarg
from talkalike.evaluate.evaluate import EvalConfig, HeldOutTurn, nll_sum, turn_text
from talkalike.evaluate.metrics import Reply, wilson_interval
from talkalike.model import causal_lm, pad_id

Pair = tuple[list[dict], Reply]  # (the history, a candidate persona turn as its messages)
Scorer = Callable[[list[Pair]], list[float]]  # higher = the candidate fits the history better

CANDIDATES = 10  # 1 real + 9 distractors, as in the response-selection literature


def one_at_a_time(score: Callable[[list[dict], Reply], float]) -> Scorer:
    """A Scorer from a function of one (context, candidate) pair."""
    return lambda pairs: [score(context, candidate) for context, candidate in pairs]


def spread(items: list, n: int | None) -> list:
    """At most `n` items evenly spread over the list (all of them with None)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[int(k * len(items) / n)] for k in range(n)]


def _share_first(scores: list[float]) -> float:
    """1 if the first score is the highest alone, 1/k if it ties with k-1 others at the top, else 0."""
    top = max(scores)
    return 1 / sum(s == top for s in scores) if scores[0] == top else 0.0


def _result(key: str, credits: list[float], chances: list[float]) -> dict:
    n = len(credits)
    hits = sum(credits)
    return {key: hits / n if n else None, "n": n, "chance": sum(chances) / n if n else 1 / CANDIDATES,
            "interval": list(wilson_interval(hits, n))}


def distractors(turn: HeldOutTurn, pool: list[HeldOutTurn], rng: random.Random, k: int = CANDIDATES - 1) -> list[Reply]:
    """Up to k persona turns of other conversations (other rows), distinct texts, none equal to the real turn."""
    real = turn_text(turn.real)
    texts = {turn_text(t.real): t.real for t in pool if t.row != turn.row}
    texts.pop(real, None)
    choices = list(texts.values())
    return rng.sample(choices, min(k, len(choices)))


def next_reply_ranking(turns: list[HeldOutTurn], score: Scorer, pool: list[HeldOutTurn] | None = None,
                       seed: int = 0) -> dict:
    """R@1 of 10: how often the real next turn outscores 9 distractors from other held-out conversations.

    `pool` (default: `turns`) supplies the distractors; the same seed draws the same distractors for every model.
    "chance" is the mean of 1/candidates (0.1 unless a small held-out set has fewer than 9 distinct distractors).
    """
    rng = random.Random(seed)
    pool = turns if pool is None else pool
    candidates = [[t.real] + distractors(t, pool, rng) for t in turns]
    pairs = [(t.context, c) for t, cs in zip(turns, candidates, strict=True) for c in cs]
    scores = iter(score(pairs))
    credits = [_share_first([next(scores) for _ in cs]) for cs in candidates]
    return _result("r@1", credits, [1 / len(cs) for cs in candidates])


def context_identification(turns: list[HeldOutTurn], sets: dict[str, list[Reply]], score: Scorer,
                           pool: list[HeldOutTurn] | None = None, seed: int = 0) -> dict[str, dict]:
    """Per set of replies: how often a reply scores highest under its own context among 10 (9 from other held-out
    conversations). `sets[name][i]` answers `turns[i]`; every set meets the same rival contexts, in one score call.
    """
    rng = random.Random(seed)
    pool = turns if pool is None else pool
    contexts = []
    for turn in turns:
        own = json.dumps(turn.context, ensure_ascii=False)
        others = {json.dumps(t.context, ensure_ascii=False): t.context for t in pool if t.row != turn.row}
        others.pop(own, None)
        contexts.append([turn.context] + rng.sample(list(others.values()), min(CANDIDATES - 1, len(others))))
    pairs = [(context, replies[i]) for replies in sets.values() for i, options in enumerate(contexts)
             for context in options]
    scores = iter(score(pairs))
    results = {}
    for name, replies in sets.items():
        assert len(replies) == len(turns), f"{name}: one reply per turn"
        credits = [_share_first([next(scores) for _ in options]) for options in contexts]
        results[name] = _result("rate", credits, [1 / len(options) for options in contexts])
    return results


def rank_next_replies(twin, turns: list[HeldOutTurn], use_adapter: bool, config: EvalConfig) -> dict:
    """R@1 of 10 for the twin with or without its adapter, on `config.rank_turns` turns spread over `turns` (None:
    all)."""
    score = model_scorer(twin, use_adapter, config.max_context_tokens, config.rank_tokens)
    return next_reply_ranking(spread(turns, config.rank_turns), score, pool=turns, seed=config.seed)


def identify_contexts(twin, turns: list[HeldOutTurn], sets: dict[str, list[Reply]], config: EvalConfig) -> dict:
    """Context identification of each set of replies (one per turn, "real" among them) judged by the base model
    (adapter off), on `config.identify_turns` turns spread over `turns`; each other set's rate as a share of the
    real's.

    The rival contexts come from those same turns, so each history is run once for all the replies scored under it.
    """
    picks = spread(list(range(len(turns))), config.identify_turns)
    score = model_scorer(twin, False, config.max_context_tokens, config.rank_tokens)
    result = context_identification([turns[i] for i in picks], {name: [replies[i] for i in picks]
                                                                 for name, replies in sets.items()},
                                    score, seed=config.seed)
    real = result["real"]["rate"]
    for name in [name for name in sets if name != "real"]:
        result[f"{name} share of real"] = result[name]["rate"] / real if real else None
    return result


# --- the model as scorer ------------------------------------------------------------------------------------------


def candidate_tokens(tokenizer, layout: str, turns: list[dict], reply: Reply, max_tokens: int) -> tuple[list, int]:
    """(token ids, where the scored tokens start): the history plus the candidate as the persona's turn, rendered as
    training renders it (template.render_reply); scored are the tokens training puts loss on in that last turn
    (its content and end-of-turn marker), at most `max_tokens` of them, and the ids stop after the last one."""
    from talkalike.template import join_bubbles, render_reply

    ids, start = render_reply(turns, join_bubbles(reply), tokenizer, layout)
    return ids[: start + max_tokens], start


def model_scorer(twin, use_adapter: bool, max_context_tokens: int = 160, max_candidate_tokens: int = 48,
                 rows: int = 32) -> Scorer:
    """Scores pairs by the candidate's log-likelihood per token under the twin (adapter on or off).

    The history is fitted into `max_context_tokens - max_candidate_tokens` tokens as for generation. Pairs are grouped by
    history: the shared prefix is run once and its KV cache copied to `rows` candidates at a time.
    """

    def score(pairs: list[Pair]) -> list[float]:
        import torch

        from talkalike.decode.config import with_overrides
        from talkalike.decode.turns import fit_messages

        # The history as generation fits it (contact line, recalled exchanges, the latest turns), so a candidate
        # is scored on the prompt a reply would have been made from.
        fitting = with_overrides(twin.defaults, max_context_tokens=max_context_tokens,
                                 max_new_tokens=max_candidate_tokens)
        groups: dict[str, list[int]] = {}
        for k, (context, _) in enumerate(pairs):
            groups.setdefault(json.dumps(context, ensure_ascii=False), []).append(k)
        scores = [0.0] * len(pairs)
        with twin.adapter(use_adapter), torch.inference_mode():
            for members in groups.values():
                turns = fit_messages(twin, pairs[members[0]][0], fitting)
                rendered = [candidate_tokens(twin.tokenizer, twin.layout, turns, pairs[k][1], max_candidate_tokens)
                            for k in members]
                for k, value in zip(members, _score_group(twin, rendered, rows), strict=True):
                    scores[k] = value
        return scores

    return score


def _shared_prefix(sequences: list[tuple[list, int]]) -> int:
    """Tokens every sequence starts with, stopping before the first scored token of any of them."""
    first = sequences[0][0]
    length = min(start for _, start in sequences)
    for ids, _ in sequences[1:]:
        length = next((p for p in range(length) if ids[p] != first[p]), length)
    return length


def _score_group(twin, sequences: list[tuple[list, int]], rows: int) -> list[float]:
    """Mean log-probability of each sequence's scored tokens; the sequences share a history (one prefill)."""
    import copy

    import torch
    from transformers import DynamicCache


    lm = causal_lm(twin.model)
    decoder, head = lm.model, lm.lm_head
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    device, kv = twin.device, cache_kwarg(twin.model)
    pad = pad_id(twin.tokenizer)
    shared = _shared_prefix(sequences)
    assert shared >= 1, "scored sequences start with at least one history token (BOS)"
    prefix_cache = DynamicCache(config=lm.config)
    prefix = torch.tensor([sequences[0][0][:shared]], device=device)
    # The last history position predicts the first candidate token, so its hidden state joins every row's.
    last = decoder(input_ids=prefix, use_cache=True, **{kv: prefix_cache}).last_hidden_state[0, -1:]
    results = []
    for begin in range(0, len(sequences), rows):
        batch = sequences[begin: begin + rows]
        width = max(len(ids) for ids, _ in batch) - shared
        ids = torch.tensor([ids[shared:] + [pad] * (width - len(ids) + shared) for ids, _ in batch], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids) + shared) for ids, _ in batch],
                                 device=device)
        attention = torch.cat([torch.ones(len(batch), shared, dtype=attention.dtype, device=device), attention], 1)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(batch))
        hidden = decoder(input_ids=ids, attention_mask=attention, use_cache=True, **{kv: cache}).last_hidden_state
        # position p's token is predicted by the state at p - 1: `last` for p = shared, then the row's own states
        states = torch.cat([torch.cat([last, hidden[row]])[start - shared: len(full) - shared]
                            for row, (full, start) in enumerate(batch)])
        targets = torch.tensor([t for full, start in batch for t in full[start:]], device=device)
        nll = []
        # The head (262k outputs on Gemma) on 256 rows at a time: its weight is read once per chunk, not per reply.
        for chunk in range(0, len(targets), 256):
            logits = head(states[chunk: chunk + 256])
            nll += [nll_sum(logits[r: r + 1], targets[chunk + r: chunk + r + 1], softcap) for r in range(len(logits))]
        end = 0
        for full, start in batch:
            count = len(full) - start
            results.append(-sum(nll[end: end + count]) / count)
            end += count
    return results
