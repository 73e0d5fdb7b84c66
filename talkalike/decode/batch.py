"""Continuous batching for `talkalike eval`: a thousand held-out replies (tuned and base) on a CPU in minutes.

Same prompts, stop rules (turns.py) and sampler (sampling.py) as the single stream, decoded many at a time:

- continuous batching: a row leaves the batch when its reply ends, and waiting prompts are prefilled as a group and
  merged into the KV cache, so the cost follows the real reply lengths instead of each batch's longest reply;
- prompts sorted by length, so a group pads little;
- the LM head runs on the last position only, into a reused buffer;
- the thread count chosen by timing the steps themselves (`Threads`).

    replies = decode_many(twin, histories, config, use_adapter=False, batch_size=64)
"""

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from talkalike.decode.config import GenerationConfig
from talkalike.decode.language import MessageStart, Steer, foreign_emoji, habit_columns
from talkalike.decode.sampling import Sampler, word_classes
from talkalike.decode.turns import (
    ends_turn,
    fit_prompt,
    message_cap,
    separator_ids,
    split_reply,
    turn_stops,
    vocabulary,
)
from talkalike.decode.twin import Twin
from talkalike.model import causal_lm, pad_id

PREFILL_ROWS = 32  # prompts prefilled together (per token, 32 rows cost 0.6 ms here, 128 rows 1.0 ms)
PROBE_EVERY = 64  # decode steps between two timings of the thread counts
PROBE_STEPS = 2  # steps timed per thread count
ROOM = 64  # spare KV-cache columns per layer: a merge or drop reallocates anyway, so growth beyond is rare


@dataclass
class Rows:
    """The rows being decoded together: their KV cache, attention mask, positions and what they produced."""

    ids: list  # index of each row's prompt
    cache: object
    mask: object  # [rows, width] 1 on real tokens; rows are left-padded, so every row ends at the last column
    positions: object  # [rows, 1] position of each row's last token
    seen: object  # [rows, n] ids in each row's sequence (padded with its first id), for the repetition penalty
    hidden: object  # [rows, hidden] last hidden state, waiting for a token to be sampled
    tokens: list  # generated ids per row
    done: list  # whether each row's reply has ended
    blocked: object = None  # [rows, head columns] True on tokens a row's reply may not use (turns.vocabulary)


def decode_many(twin: Twin, histories: list[list[dict]], config: GenerationConfig, use_adapter: bool = True,
                batch_size: int = 128, temperatures: list[float] | None = None,
                progress: Callable[[int], None] | None = None, threads: "Threads | None" = None,
                prompts: list[list[int]] | None = None) -> list[list[str]]:
    """The persona's next turn for every history (lists of messages, in the caller's order).

    `temperatures` overrides config.temperature per history (0 = greedy), so greedy and sampled generations share
    one batch; `progress(n)` is called as replies finish; `threads` (a Threads) picks the thread count by timing
    the decode steps; `prompts` are the histories' prompt ids when the caller has rendered them (else fit_prompt's).
    """
    import time

    import torch

    if prompts is None:
        prompts = [fit_prompt(twin, history, config) for history in histories]
    temps = temperatures if temperatures is not None else [config.temperature] * len(prompts)
    decoder = Batch(twin, config, batch_size, temps, allowed=vocabulary(twin, prompts, config))
    if decoder.steer is not None:
        decoder.shares = [decoder.steer.share(history) for history in histories]
    threads = threads or Threads(None)
    threads.restart()
    queue = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    results: list[list[int]] = [[] for _ in prompts]
    rows: Rows | None = None
    with twin.adapter(use_adapter), torch.inference_mode():
        while queue or rows is not None:
            free = batch_size - (len(rows.ids) if rows else 0)
            if queue and (rows is None or (free >= decoder.refill_min and decoder.mergeable)):
                group = [queue.popleft() for _ in range(min(free, len(queue)))]
                # Prefill in groups of PREFILL_ROWS: wider ones cost more per token here (activations leave the cache)
                size = PREFILL_ROWS if decoder.mergeable else len(group)
                for start in range(0, len(group), size):
                    part = group[start: start + size]
                    rows = decoder.merge(rows, decoder.prefill(part, [prompts[i] for i in part]))
            threads.choose()
            started = time.perf_counter()
            finished = decoder.sample(rows)
            if finished and progress:
                progress(finished)
            if all(rows.done) or sum(rows.done) >= decoder.compact_min:
                for i, tokens, done in zip(rows.ids, rows.tokens, rows.done, strict=True):
                    if done:
                        results[i] = tokens
                rows = decoder.drop_finished(rows)
            if rows is not None:
                decoder.step(rows)
                threads.record((time.perf_counter() - started) / len(rows.ids))
    text_stops, cap = turn_stops(twin.tokenizer, twin.layout), message_cap(twin, config)
    return [split_reply(twin.tokenizer.decode(tokens, skip_special_tokens=False), text_stops, cap, twin.line_breaks)
            for tokens in results]


class Threads:
    """The torch thread count, chosen by timing the work itself: every PROBE_EVERY steps (decode steps, perplexity
    batches), PROBE_STEPS steps with `most` threads and as many with one, then the faster per unit of work. On an
    idle 2-core machine two threads are faster; when other work holds a core, two threads wait for each other at
    every barrier and run several times slower than one. most=None: keep torch's setting."""

    def __init__(self, most: int | None):
        self.options = [most, 1] if most and most > 1 else []
        self.best = most
        self.step = 0
        self.times: dict[int, float] = {}
        self.current: int | None = None
        self.decided = False  # whether a probe has chosen yet

    def calibrate(self, twin: Twin) -> None:
        """A first choice before the real work, whose first units (perplexity batches of up to 8 x 1,024 tokens)
        are too large to probe with: a 4 x 32-token forward, timed PROBE_STEPS times per option, interleaved."""
        import time

        import torch

        if not self.options:
            return
        lm = causal_lm(twin.model)
        ids = torch.full((4, 32), twin.tokenizer.bos_token_id or 0, device=twin.device)
        times: dict[int, float] = {}
        with torch.inference_mode():
            for _ in range(PROBE_STEPS):
                for option in self.options:
                    torch.set_num_threads(option)
                    started = time.perf_counter()
                    lm.model(input_ids=ids)
                    times[option] = min(times.get(option, float("inf")), time.perf_counter() - started)
        self.best = min(times, key=times.get)
        torch.set_num_threads(self.best)
        self.decided = True

    def restart(self) -> None:
        """A new kind of step (decode after perplexity) has its own unit of work, so timings are not compared across
        the change: the next probe starts afresh, right away the first time, else after PROBE_EVERY steps of the
        count chosen so far (a short phase then keeps the earlier choice instead of probing)."""
        self.times = {}
        self.step = PROBE_STEPS * len(self.options) if self.decided else 0

    def choose(self) -> None:
        """Set the thread count for the next step."""
        import torch

        if not self.options:
            return
        phase = self.step % PROBE_EVERY
        probing = phase < PROBE_STEPS * len(self.options)
        self.current = self.options[phase // PROBE_STEPS] if probing else self.best
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)

    def record(self, seconds_per_unit: float) -> None:
        """The last step's wall time per unit (row, token); after a probe, keep the faster thread count."""
        if not self.options:
            return
        phase = self.step % PROBE_EVERY
        if phase < PROBE_STEPS * len(self.options):
            # the best of a thread count's probe steps: its first may pay for waking the thread pool
            self.times[self.current] = min(self.times.get(self.current, seconds_per_unit), seconds_per_unit)
            if phase == PROBE_STEPS * len(self.options) - 1:
                self.best = min(self.times, key=self.times.get)
                self.times = {}
                self.decided = True
        self.step += 1


class Batch:
    """Prefill, merge, sample, drop and step for one model and one sampling config."""

    def __init__(self, twin: Twin, config: GenerationConfig, batch_size: int, temperatures: list[float],
                 allowed: list[int] | None = None):
        import torch
        from transformers import DynamicCache

        from talkalike.decode.engines.eager import cache_kwarg

        self.twin, self.config = twin, config
        self.temperatures = temperatures
        model = twin.model
        lm = causal_lm(model)
        # The decoder stack and the head separately: the head then runs on the last position only, into a buffer.
        self.body, self.head = lm.model, lm.lm_head
        self.cache_config = model.config
        self.kv = cache_kwarg(model)
        self.device = twin.device
        self.pad = pad_id(twin.tokenizer)
        self.text_stops = turn_stops(twin.tokenizer, twin.layout)
        self.vocab = lm.config.vocab_size
        self.plain_head = type(self.head) is torch.nn.Linear
        separators = separator_ids(twin.tokenizer)
        # With a restricted vocabulary (`allowed`: the persona's own tokens and every prompt's, turns.vocabulary) a
        # plain head computes only those rows: on Gemma's 262k-token head, most of a CPU decode step. Ids are then
        # head columns (positions in `keep`) until they are returned; each row also blocks the other rows' prompts.
        self.keep = self.own = None
        head_rows = self.vocab
        if allowed is not None and self.plain_head:
            self.keep = torch.tensor(allowed, dtype=torch.long, device=self.device)
            self.to_sub = torch.zeros(self.vocab, dtype=torch.long, device=self.device)
            self.to_sub[self.keep] = torch.arange(len(allowed), device=self.device)
            self.head_weight = self.head.weight[self.keep]
            separators = [int(self.to_sub[s]) for s in separators if s in set(allowed)]
            head_rows = len(allowed)
        if allowed is not None:
            self.own = self.column(torch.tensor(sorted(twin.own_tokens()), dtype=torch.long, device=self.device))
        self.head_rows = head_rows
        # The persona's opening-script shares (decode/language.py), over the head's columns; per prompt in `shares`.
        self.steer = Steer.of(twin, self.device) if config.steer_language else None
        if self.steer is not None and self.keep is not None:
            self.steer = self.steer.columns(self.keep, self.to_sub)
        self.shares: list[float | None] = [None] * len(temperatures)
        habits = habit_columns(twin, self.device, config)
        banned = foreign_emoji(twin, self.device, config)
        if self.keep is not None:  # the habit and banned tokens the restricted head computes, as its columns
            habits = [self.to_sub[ids[torch.isin(ids, self.keep)]] for ids in habits or []]
            banned = None if banned is None else self.to_sub[banned[torch.isin(banned, self.keep)]]
        self.sampler = Sampler(config, head_rows, batch_size, self.device,
                               softcap=getattr(lm.config, "final_logit_softcapping", None), separator_ids=separators,
                               steer=self.steer, habits=habits,
                               # a restricted head's ids are its columns: its word classes are over them
                               words=word_classes(twin.tokenizer, head_rows, self.device, config,
                                                  columns=None if self.keep is None else allowed),
                               starts=self._starts(twin.tokenizer, allowed), banned=banned)
        self.head_out = torch.empty(batch_size, head_rows, dtype=self.head.weight.dtype, device=self.device) \
            if self.plain_head else None
        # Refill once a quarter of the batch is free: each merge copies the cache once, as one decode step does.
        self.refill_min = max(1, batch_size // 4)
        self.compact_min = max(1, batch_size // 8)  # a finished row costs a row of compute per step until dropped
        self.mergeable = self._mergeable(DynamicCache(config=self.cache_config),
                                         getattr(model.config, "sliding_window", None))

    def _starts(self, tokenizer, allowed: list[int] | None) -> MessageStart | None:
        """Where a message starts, over the head's columns (None where a restricted head lacks the separator)."""
        starts = MessageStart.of(tokenizer)
        if self.keep is None:
            return starts
        return starts.columns(self.to_sub) if set(starts.tail) <= set(allowed) else None

    def column(self, ids):
        """Token ids as the head's columns (the same ids without a restricted head)."""
        return ids if self.keep is None else self.to_sub[ids]

    def new_cache(self):
        """A KV cache; where groups can merge, its layers write each step in place (_slot_layer)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.cache_config)
        if self.mergeable:
            cache.layers = [_slot_layer()(layer.is_sliding) for layer in cache.layers]
        return cache

    # --- the KV cache -------------------------------------------------------------------------------------------

    def prefill(self, ids: list[int], prompts: list[list[int]]) -> Rows:
        """A group of prompts, left-padded to the longest, run through the model once. A prompt that comes more than
        once (the facts probe's greedy and sampled replies to one question) runs once, its row copied to the others."""
        import torch

        distinct = {tuple(prompt): None for prompt in prompts}
        if len(distinct) < len(prompts):
            position = {prompt: k for k, prompt in enumerate(distinct)}
            once = self.prefill(list(range(len(distinct))), [list(prompt) for prompt in distinct])
            return self._copied(once, ids, [position[tuple(prompt)] for prompt in prompts])
        width = max(len(p) for p in prompts)
        tensor, mask, positions = left_pad(prompts, self.pad, self.device)
        seen = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=self.device)
        cache = self.new_cache()
        out = self.body(input_ids=tensor, attention_mask=mask, position_ids=positions, use_cache=True,
                        **{self.kv: cache})
        blocked = None
        if self.own is not None:  # each row: the persona's own tokens and its own prompt's
            blocked = torch.ones(len(ids), self.head_rows, dtype=torch.bool, device=self.device)
            blocked[:, self.own] = False
            for row, prompt in enumerate(prompts):
                blocked[row, self.column(torch.tensor(prompt, device=self.device))] = False
        return Rows(ids, cache, mask, positions[:, -1:], seen, out.last_hidden_state[:, -1].contiguous(),
                     [[] for _ in ids], [False] * len(ids), blocked)

    def _copied(self, rows: Rows, ids: list, index: list[int]) -> Rows:
        """`rows` re-dealt: row k of the result is row index[k] of `rows`, cache included, under the id ids[k]."""
        import torch

        index = torch.tensor(index, device=self.device)
        if self.mergeable:
            for layer in rows.cache.layers:
                layer.assign(layer.keys[index], layer.values[index])
        else:
            rows.cache.batch_select_indices(index)
        return Rows(ids, rows.cache, rows.mask[index], rows.positions[index], rows.seen[index], rows.hidden[index],
                    [[] for _ in ids], [False] * len(ids), None if rows.blocked is None else rows.blocked[index])

    def _mergeable(self, cache, window: int | None) -> bool:
        """Whether groups can join a batch mid-decode: plain dynamic cache layers only, and every sequence within a
        sliding window, so a sliding layer never drops a token and can be kept like a full one."""
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        kinds = {type(layer) for layer in cache.layers}
        fits = not window or self.config.max_context_tokens + self.config.max_new_tokens < window - 1
        return kinds <= {DynamicLayer, DynamicSlidingWindowLayer} and fits

    def merge(self, rows: Rows | None, new: Rows) -> Rows:
        """One batch of both: the narrower one's cache and mask left-padded to the wider's width."""
        import torch

        if rows is None:
            return new
        width = max(rows.mask.shape[1], new.mask.shape[1])
        for old_layer, new_layer in zip(rows.cache.layers, new.cache.layers, strict=True):
            old_layer.assign(_stack_left_padded(old_layer.keys, new_layer.keys, width, dim=2),
                             _stack_left_padded(old_layer.values, new_layer.values, width, dim=2))
        mask = _stack_left_padded(rows.mask, new.mask, width, dim=1)
        seen_width = max(rows.seen.shape[1], new.seen.shape[1])
        seen = torch.cat([_pad_seen(rows.seen, seen_width), _pad_seen(new.seen, seen_width)])
        blocked = None if rows.blocked is None else torch.cat([rows.blocked, new.blocked])
        return Rows(rows.ids + new.ids, rows.cache, mask, torch.cat([rows.positions, new.positions]), seen,
                     torch.cat([rows.hidden, new.hidden]), rows.tokens + new.tokens, rows.done + new.done, blocked)

    def drop_finished(self, rows: Rows) -> Rows | None:
        """The rows still decoding (None if none), with columns that are padding in every row trimmed away."""
        import torch

        keep = [k for k, done in enumerate(rows.done) if not done]
        if not keep:
            return None
        index = torch.tensor(keep, device=self.device)
        mask = rows.mask[index]
        if self.mergeable:
            start = int((mask.sum(0) > 0).nonzero()[0])  # first column some row still uses
            for layer in rows.cache.layers:
                layer.assign(layer.keys[index, :, start:], layer.values[index, :, start:])
        else:
            start = 0
            rows.cache.batch_select_indices(index)
        return Rows([rows.ids[k] for k in keep], rows.cache, mask[:, start:].contiguous(), rows.positions[index],
                     rows.seen[index], rows.hidden[index], [rows.tokens[k] for k in keep], [False] * len(keep),
                     None if rows.blocked is None else rows.blocked[index])

    def step(self, rows: Rows) -> None:
        """Feed each row its last sampled token (finished rows: any token, ignored) and keep the new hidden states."""
        import torch

        tokens = torch.tensor([t[-1] if t else self.pad for t in rows.tokens], device=self.device)
        rows.seen = torch.cat([rows.seen, tokens[:, None]], dim=1)
        rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
        rows.positions = rows.positions + 1
        out = self.body(input_ids=tokens[:, None], attention_mask=rows.mask, position_ids=rows.positions,
                        use_cache=True, **{self.kv: rows.cache})
        rows.hidden = out.last_hidden_state[:, -1].contiguous()

    # --- sampling -----------------------------------------------------------------------------------------------

    def logits(self, rows: Rows):
        """The head over each row's last hidden state: [rows, head columns], before any softcap (the sampler's)."""
        import torch

        n = len(rows.ids)
        if self.keep is not None:
            return torch.mm(rows.hidden, self.head_weight.t(), out=self.head_out[:n])
        if self.plain_head:
            return torch.mm(rows.hidden, self.head.weight.t(), out=self.head_out[:n])
        # a LoRA-wrapped head (the "original" preset trains it): its own forward, adapter switch included
        return self.head(rows.hidden)

    def sample(self, rows: Rows) -> int:
        """Draw the next token of every unfinished row and apply the stop rules; returns how many rows finished."""
        import torch

        logits = self.logits(rows)
        replies = [self.column(torch.tensor(t, dtype=torch.long, device=self.device)) for t in rows.tokens] \
            if self.config.no_repeat_ngram > 1 or self.steer is not None else None
        drawn = self.sampler(logits, self.column(rows.seen), [self.temperatures[i] for i in rows.ids], replies,
                             rows.blocked, [self.shares[i] for i in rows.ids])
        tokens = (drawn if self.keep is None else self.keep[drawn]).tolist()
        finished = 0
        for k, token in enumerate(tokens):
            if rows.done[k]:
                continue
            generated = rows.tokens[k]
            if token in self.twin.stop_ids:
                rows.done[k] = True
            else:
                generated.append(token)
                rows.done[k] = ends_turn(self.twin.tokenizer, generated, self.text_stops) \
                    or len(generated) >= self.config.max_new_tokens
            finished += rows.done[k]
        return finished


def left_pad(prompts: list[list[int]], pad: int, device):
    """Prompts left-padded to the longest: ids, attention mask and positions. Positions count real tokens only, so
    every row sees the positions it would alone."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _stack_left_padded(first, second, width: int, dim: int):
    """`first` and `second` stacked along dim 0, each left-padded with zeros along `dim` to `width`."""
    import torch

    shape = list(first.shape)
    shape[0], shape[dim] = first.shape[0] + second.shape[0], width
    out = torch.zeros(shape, dtype=first.dtype, device=first.device)
    out.narrow(0, 0, first.shape[0]).narrow(dim, width - first.shape[dim], first.shape[dim]).copy_(first)
    out.narrow(0, first.shape[0], second.shape[0]).narrow(dim, width - second.shape[dim], second.shape[dim]).copy_(
        second)
    return out


def _pad_seen(seen, width: int):
    """Seen ids padded on the right with each row's first id (a repeat changes nothing in the penalty)."""
    import torch

    return torch.cat([seen, seen[:, :1].expand(-1, width - seen.shape[1])], dim=1)


@functools.cache
def _slot_layer():
    """The _SlotLayer class (defined on first use: transformers is a heavy import)."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A KV cache layer whose keys and values live in a buffer with ROOM spare columns: a decode step writes
        its column in place, where DynamicLayer's torch.cat copies the whole cache (30% of a 128-row step on this
        CPU). Attention reads views of the buffer (SDPA takes them as they are). Used only where every sequence
        fits the model's sliding window, so a sliding layer keeps every token, like a full one (the mask slides)."""

        def __init__(self, is_sliding: bool):
            super().__init__()
            self.is_sliding = is_sliding  # what mask creation asks of a layer
            self.length = 0

        def update(self, key_states, value_states, *args, **kwargs):
            """Append the new columns in place; returns the keys and values so far (views)."""
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.assign(key_states, value_states)
                return self.keys, self.values
            end = self.length + key_states.shape[-2]
            if end > self.key_buffer.shape[-2]:
                self.assign(self.keys, self.values)
            self.key_buffer[:, :, self.length: end].copy_(key_states)
            self.value_buffer[:, :, self.length: end].copy_(value_states)
            self._view(end)
            return self.keys, self.values

        def assign(self, keys, values) -> None:
            """Replace the contents (a merge, dropped rows), in a fresh buffer with ROOM spare columns."""
            import torch

            shape = list(keys.shape)
            shape[2] += ROOM
            self.key_buffer = torch.empty(shape, dtype=keys.dtype, device=keys.device)
            self.value_buffer = torch.empty(shape, dtype=values.dtype, device=values.device)
            self.key_buffer[:, :, : keys.shape[2]].copy_(keys)
            self.value_buffer[:, :, : values.shape[2]].copy_(values)
            self._view(keys.shape[2])

        def _view(self, length: int) -> None:
            self.length = length
            self.keys = self.key_buffer[:, :, :length]
            self.values = self.value_buffer[:, :, :length]

    return SlotLayer
