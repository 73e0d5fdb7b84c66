"""Preference tuning after supervised training: given the same history, the persona's real reply should beat a reply
of theirs from another conversation (DPO, Rafailov et al. 2023, "Direct Preference Optimization").

Supervised training teaches the persona's surface: any reply of theirs becomes likely, whatever was said to them. A
pair here holds one history and two of the persona's own replies, the one they sent and one they sent in another
conversation. Both are in their style, so only the history tells them apart. DPO raises the real reply's likelihood
against the other's, relative to the supervised twin (the reference), so the twin learns to answer the message in
front of it while staying near what supervised training taught.

    pairs = preference_pairs(train_rows, memory, memories=3, limit=600, seed=42)
    report = tune(peft_model, tokenizer, "chat", pairs, held_out_pairs, recipe)

The loop is ours, not TRL's DPOTrainer: for a PEFT model TRL takes the base with the adapter switched off as the
reference, and its fused head reads lm_head's weight, missing the turn-end rows the run trained. Here the reference
is the supervised twin itself, and every log-likelihood goes through the model's own head, trained rows included, as
training computes it (train/trainer.py). The chosen and rejected sequences of a few pairs share one padding-free row,
each with its own positions, as packed training does.
"""

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from talkalike.memory import MEMORY_KEY, with_recalled
from talkalike.template import render_reply


@dataclass(frozen=True)
class Pair:
    """A history (recalled exchanges included, as training renders it) and two persona replies to it."""

    history: list
    chosen: str  # what the persona replied
    rejected: str  # what they replied in another conversation (or the base model's reply: with_base_replies)


def _persona_turns(row: dict) -> list[int]:
    """Indices of the row's persona turns that answer a message (the turn before is a non-empty user message)."""
    messages = row["messages"]
    return [j for j, m in enumerate(messages)
            if m["role"] == "assistant" and not m.get(MEMORY_KEY) and j > 0
            and messages[j - 1]["role"] == "user" and messages[j - 1]["content"].strip()]


def preference_pairs(rows: list[dict], memory=None, memories: int = 0, limit: int | None = None,
                     seed: int = 0) -> list[Pair]:
    """Up to `limit` pairs (None: one per answering persona turn), spread evenly over the rows' persona turns; each
    rejected reply is a persona turn of another row (another conversation) with a different text, drawn with `seed`.
    Histories get the `memories` exchanges recalled for their row, as training gives them (memory.with_recalled)."""
    rng = random.Random(seed)
    turns = [(r, j) for r, row in enumerate(rows) for j in _persona_turns(row)]
    if limit is not None and limit < len(turns):
        turns = [turns[int(k * len(turns) / limit)] for k in range(limit)]
    replies = [(r, m["content"]) for r, row in enumerate(rows) for m in row["messages"]
               if m["role"] == "assistant" and not m.get(MEMORY_KEY)]
    recalled: dict[int, list[dict]] = {}
    pairs = []
    for r, j in turns:
        chosen = rows[r]["messages"][j]["content"]
        rejected = None
        for _ in range(64):  # a row's own turns are few among all: a handful of draws finds another's
            other, text = replies[rng.randrange(len(replies))]
            if other != r and text != chosen:
                rejected = text
                break
        if rejected is None:
            continue
        if r not in recalled:
            recalled[r] = with_recalled(rows[r], memory, memories)
        messages = recalled[r]
        shift = len(messages) - len(rows[r]["messages"])  # recalled turns sit before the row's own
        pairs.append(Pair(messages[: j + shift], chosen, rejected))
    return pairs


def with_base_replies(model, tokenizer, layout: str, pairs: list[Pair], share: float, seed: int = 0,
                      max_new_tokens: int = 64, batch_size: int = 64) -> tuple[list[Pair], int]:
    """`pairs` with a `share` of them (spread evenly) rejecting the base model's own reply to their history instead:
    sampled with `model`'s adapter off (a PEFT model), at the chat's default settings, from the very prompt the pair
    is scored on. Returns the pairs and how many now reject a base reply (an empty one, or the real reply itself,
    leaves its pair as it was)."""
    import dataclasses

    from talkalike.decode.batch import decode_many
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.twin import Twin
    from talkalike.template import join_bubbles

    count = min(len(pairs), round(share * len(pairs)))
    if count <= 0:
        return pairs, 0
    picks = [int(k * len(pairs) / count) for k in range(count)]
    prompts = []
    for k in picks:
        ids, start = render_reply(pairs[k].history, "", tokenizer, layout)
        prompts.append(ids[:start])
    # The base as it is: no memories to recall (the history holds them), no steering toward the persona's habits.
    config = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed, memories=0, max_messages=0,
                              steer_language=False, keep_habits=False, opener_temperature=None)
    twin = Twin.of(model, tokenizer, layout, has_adapter=True)
    training = model.training
    model.eval()
    try:
        replies = decode_many(twin, [pairs[k].history for k in picks], config, use_adapter=False,
                              batch_size=batch_size, prompts=prompts)
    finally:
        model.train(training)
    changed, used = list(pairs), 0
    for k, messages in zip(picks, replies, strict=True):
        text = join_bubbles(messages)
        if text.strip() and text != pairs[k].chosen:
            changed[k] = dataclasses.replace(pairs[k], rejected=text)
            used += 1
    return changed, used


@dataclass(frozen=True)
class Encoded:
    """A pair's two sequences as token ids; each reply's trained tokens run from its `start` to its end."""

    chosen: list
    chosen_start: int
    rejected: list
    rejected_start: int


def encode(pairs: list[Pair], tokenizer, layout: str, max_length: int) -> tuple[list[Encoded], int]:
    """The pairs as token ids, and how many were left out for a sequence longer than `max_length`."""
    encoded, too_long = [], 0
    for pair in pairs:
        chosen, chosen_start = render_reply(pair.history, pair.chosen, tokenizer, layout)
        rejected, rejected_start = render_reply(pair.history, pair.rejected, tokenizer, layout)
        if max(len(chosen), len(rejected)) > max_length:
            too_long += 1
            continue
        encoded.append(Encoded(chosen, chosen_start, rejected, rejected_start))
    return encoded, too_long


def pack(encoded: list[Encoded], budget: int, most: int | None = None) -> list[list[int]]:
    """Pairs (as indices) grouped into rows of at most `budget` tokens and `most` pairs, in order; a pair never spans
    two rows."""
    rows, row, used = [], [], 0
    for k, pair in enumerate(encoded):
        size = len(pair.chosen) + len(pair.rejected)
        if row and (used + size > budget or (most is not None and len(row) >= most)):
            rows.append(row)
            row, used = [], 0
        row.append(k)
        used += size
    return rows + ([row] if row else [])


def sequence_logps(model, encoded: list[Encoded], members: list[int], device):
    """Summed log-probability of each member pair's chosen and rejected reply tokens: [pairs, 2], from one
    padding-free row (positions restart per sequence, so no sequence attends to another) through the model's own
    forward and head, only at the positions that predict a reply token."""
    import torch

    ids, positions, keep, segment = [], [], [], []
    for n, k in enumerate(members):
        pair = encoded[k]
        for side, (tokens, start) in enumerate(((pair.chosen, pair.chosen_start),
                                                (pair.rejected, pair.rejected_start))):
            assert start >= 1, "a reply follows at least one history token"
            ids += tokens
            positions += range(len(tokens))
            # position p predicts token p + 1: the reply's tokens start..end-1 are predicted from start-1..end-2
            keep += [False] * (start - 1) + [True] * (len(tokens) - start) + [False]
            segment += [2 * n + side] * (len(tokens) - start)
    ids_t = torch.tensor([ids], device=device)
    keep_t = torch.tensor(keep, device=device)
    targets = ids_t[0, 1:][keep_t[:-1]]
    outputs = model(input_ids=ids_t, position_ids=torch.tensor([positions], device=device), logits_to_keep=keep_t,
                    use_cache=False)
    logits = outputs.logits[0].float()
    token_logps = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    sums = torch.zeros(2 * len(members), device=device).index_add(0, torch.tensor(segment, device=device), token_logps)
    return sums.view(len(members), 2)


def _all_logps(model, encoded: list[Encoded], rows: list[list[int]], device, autocast):
    """[pairs, 2] log-probabilities under the model as it is now (no gradients)."""
    import torch

    out = torch.zeros(len(encoded), 2)
    with torch.no_grad(), autocast():
        for members in rows:
            out[members] = sequence_logps(model, encoded, members, device).float().cpu()
    return out


def dpo_loss(policy, reference, beta: float):
    """Per-pair DPO loss -log sigmoid(beta * ((chosen - ref chosen) - (rejected - ref rejected))), and the margins."""
    import torch.nn.functional as F

    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return -F.logsigmoid(beta * margin), margin


def tune(model, tokenizer, layout: str, pairs: list[Pair], held_out: list[Pair], recipe,
         on_log: Callable[[dict], None] | None = None, progress: bool = True) -> dict:
    """One pass of DPO over `pairs` on `model` (a PEFT model after supervised training; its trainable weights keep
    training), with the model as it is now as the reference. Returns what happened, for run.json: how often the
    real reply is preferred on `held_out` pairs before and after, the last steps' loss and reward accuracy."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device

    def autocast():  # as supervised training computed: bf16 where resolve_recipe chose it for this machine
        return torch.autocast(device.type, dtype=torch.bfloat16) if recipe.bf16 else contextlib.nullcontext()

    started = time.perf_counter()
    budget = 2 * recipe.max_length
    encoded, too_long = encode(pairs, tokenizer, layout, recipe.max_length)
    held, _ = encode(held_out, tokenizer, layout, recipe.max_length)
    if not encoded:
        return {"pairs": 0, "left out (too long)": too_long}
    # A row holds at most one step's pairs, so that short pairs still make steps of about `preference_batch`.
    rows, held_rows = pack(encoded, budget, recipe.preference_batch), pack(held, budget, recipe.preference_batch)

    model.eval()
    reference = _all_logps(model, encoded, rows, device, autocast)
    held_before = _all_logps(model, held, held_rows, device, autocast) if held else None

    # Steps of about `pairs_per_step` pairs, whole rows each; a linear warm-up over a tenth, then linear decay.
    pairs_per_step = recipe.preference_batch
    steps, current, count = [], [], 0
    for members in rows:
        current.append(members)
        count += len(members)
        if count >= pairs_per_step:
            steps.append(current)
            current, count = [], 0
    if current:
        steps.append(current)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.preference_lr, weight_decay=0.0)
    warmup = max(1, len(steps) // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (len(steps) - s) / max(1, len(steps) - warmup))))
    generator = random.Random(recipe.seed)
    generator.shuffle(steps)
    model.train()
    losses, accuracies = [], []
    bar = tqdm(total=len(steps), unit="step", desc="preference", file=sys.stderr, disable=not progress)
    for step, step_rows in enumerate(steps, 1):
        total = sum(len(members) for members in step_rows)
        real_tokens = sum(len(encoded[k].chosen) - encoded[k].chosen_start for members in step_rows for k in members)
        step_loss, step_correct = 0.0, 0
        for members in step_rows:
            with autocast():
                policy = sequence_logps(model, encoded, members, device).float()
            loss, margin = dpo_loss(policy, reference[members].to(device), recipe.preference_beta)
            # With preference_nll, the real reply's own loss per token too (RPO): DPO alone can raise the real
            # reply over the other by lowering both, and the twin then drifts from the persona's style.
            objective = loss.sum() / total - recipe.preference_nll * policy[:, 0].sum() / real_tokens
            objective.backward()
            step_loss += float(loss.detach().sum())
            step_correct += int((margin.detach() > 0).sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss / total)
        accuracies.append(step_correct / total)
        bar.set_postfix_str(f"loss {losses[-1]:.3f}", refresh=False)
        bar.update(1)
        if on_log is not None:
            on_log({"phase": "preference", "preference_step": step, "preference_loss": round(losses[-1], 4),
                    "reward_accuracy": round(accuracies[-1], 4), "learning_rate": schedule.get_last_lr()[0]})
    bar.close()
    model.eval()
    report = {
        "pairs": len(encoded),
        "left out (too long)": too_long,
        "steps": len(steps),
        "beta": recipe.preference_beta,
        "nll weight": recipe.preference_nll,
        "learning rate": recipe.preference_lr,
        "first loss": round(losses[0], 4),  # log 2 = 0.6931: the policy starts as the reference
        "last loss": round(sum(losses[-5:]) / len(losses[-5:]), 4),
        "last reward accuracy": round(sum(accuracies[-5:]) / len(accuracies[-5:]), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if held:
        after = _all_logps(model, held, held_rows, device, autocast)
        report["held-out pairs"] = len(held)
        # As R@1 asks (of two): is the real reply the likelier one? And DPO's own measure: did its likelihood rise
        # against the other's, relative to the supervised twin?
        report["real reply preferred (held out)"] = {
            "before": round(float((held_before[:, 0] > held_before[:, 1]).float().mean()), 4),
            "after": round(float((after[:, 0] > after[:, 1]).float().mean()), 4),
        }
        _, margin = dpo_loss(after, held_before, recipe.preference_beta)
        report["reward accuracy (held out)"] = round(float((margin > 0).float().mean()), 4)
    return report
