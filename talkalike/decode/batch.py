"""Batched decoding for `talkalike eval`: a thousand held-out replies (tuned and base) on a CPU in minutes.

Same prompts (generate.fit_prompt), same stop rules and the same sampling distribution as generate.generate_batch
(generate._sample: repetition penalty over the whole sequence, temperature, top-p), decoded faster:

- continuous batching: a row leaves the batch when its reply ends, and waiting prompts are prefilled as a group and
  merged into the KV cache, so the cost follows the real reply lengths instead of each batch's longest reply;
- prompts sorted by length, so a group pads little;
- sampling without whole-vocabulary passes it does not need. On a 262k vocabulary, generate._sample spends 10 ms
  per row and step (a where() for the repetition penalty and torch.multinomial), 2-3x the forward pass itself
  (BENCHMARKS.md, "Evaluation"). Here the penalty touches the seen tokens only, and a token is drawn in two stages
  (a block of the vocabulary by its mass, then a token inside it): the same distribution, one exp() pass;
- the LM head writes into a reused buffer (a fresh 30-70 MB tensor per step costs page faults on every step).

    replies = decode_many(twin, histories, config, use_adapter=False, batch_size=64)
"""

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from talkalike.decode.generate import (GenerationConfig, Twin, _adapter_switch, fit_prompt, split_reply, stop_token_ids,
                                turn_stops)

BLOCK = 512  # two-stage sampling: 262,144 = 512 x 512, so each stage draws from 512 values
TOP_P_CANDIDATES = 1024  # top-p looks for its nucleus among the most likely tokens first (exact; else a full sort)
PREFILL_ROWS = 32  # prompts prefilled together (per token, 32 rows cost 0.6 ms here, 128 rows 1.0 ms)
PROBE_EVERY = 64  # decode steps between two timings of the thread counts
PROBE_STEPS = 2  # steps timed per thread count
CHUNK_ROWS = 2  # rows of logits transformed together while they sit in the CPU's L2 cache
ROOM = 64  # spare KV-cache columns per layer: a merge or drop reallocates anyway, so growth beyond is rare


@dataclass
class _Rows:
    """The rows being decoded together: their KV cache, attention mask, positions and what they produced."""

    ids: list  # index of each row's prompt
    cache: object
    mask: object  # [rows, width] 1 on real tokens; rows are left-padded, so every row ends at the last column
    positions: object  # [rows, 1] position of each row's last token
    seen: object  # [rows, n] ids in each row's sequence (padded with its first id), for the repetition penalty
    hidden: object  # [rows, hidden] last hidden state, waiting for a token to be sampled
    tokens: list  # generated ids per row
    done: list  # whether each row's reply has ended


def decode_many(twin: Twin, histories: list[list[dict]], config: GenerationConfig, use_adapter: bool = True,
                batch_size: int = 128, temperatures: list[float] | None = None,
                progress: Callable[[int], None] | None = None, threads: "Threads | None" = None) -> list[list[str]]:
    """The persona's next turn for every history (lists of messages, in the caller's order).

    `temperatures` overrides config.temperature per history (0 = greedy), so greedy and sampled generations share
    one batch; `progress(n)` is called as replies finish; `threads` (a Threads) picks the thread count by timing
    the decode steps.
    """
    import time

    import torch

    prompts = [fit_prompt(twin, history, config) for history in histories]
    temps = temperatures if temperatures is not None else [config.temperature] * len(prompts)
    decoder = _Decoder(twin, config, batch_size, temps)
    threads = threads or Threads(None)
    threads.restart()
    queue = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    results: list[list[int]] = [[] for _ in prompts]
    rows: _Rows | None = None
    with _adapter_switch(twin, use_adapter), torch.inference_mode():
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
                for i, tokens, done in zip(rows.ids, rows.tokens, rows.done):
                    if done:
                        results[i] = tokens
                rows = decoder.drop_finished(rows)
            if rows is not None:
                decoder.step(rows)
                threads.record((time.perf_counter() - started) / len(rows.ids))
    text_stops = turn_stops(twin.tokenizer, twin.layout)
    return [split_reply(twin.tokenizer.decode(tokens, skip_special_tokens=False), text_stops) for tokens in results]


class Threads:
    """The torch thread count, chosen by timing the work itself: every PROBE_EVERY steps (decode steps, perplexity
    batches), PROBE_STEPS steps with `most` threads and as many with one, then the faster per unit of work. On an
    idle 2-core machine two threads are faster; when other work holds a core, two threads wait for each other at
    every barrier and run 4x slower than one (BENCHMARKS.md, "Evaluation"). most=None: keep torch's setting."""

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
        causal_lm = twin.model.get_base_model() if twin.has_adapter else twin.model
        ids = torch.full((4, 32), twin.tokenizer.bos_token_id or 0, device=twin.device)
        times: dict[int, float] = {}
        with torch.inference_mode():
            for _ in range(PROBE_STEPS):
                for option in self.options:
                    torch.set_num_threads(option)
                    started = time.perf_counter()
                    causal_lm.model(input_ids=ids)
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


class _Decoder:
    """Prefill, merge, sample, drop and step for one model and one sampling config."""

    def __init__(self, twin: Twin, config: GenerationConfig, batch_size: int, temperatures: list[float]):
        import torch
        from transformers import DynamicCache

        self.twin, self.config = twin, config
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32, device=twin.device)
        model = twin.model
        causal_lm = model.get_base_model() if twin.has_adapter else model
        # The decoder stack and the head separately: the head then runs on the last position only, into a buffer.
        self.body, self.head = causal_lm.model, causal_lm.lm_head
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        self.cache_config = model.config
        self.kv = twin.cache_kwarg
        self.device = twin.device
        self.pad = twin.tokenizer.pad_token_id if twin.tokenizer.pad_token_id is not None else 0
        self.stops = stop_token_ids(twin)
        self.text_stops = turn_stops(twin.tokenizer, twin.layout)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed) \
            if config.seed is not None else None
        self.vocab = causal_lm.config.vocab_size
        padded = -(-self.vocab // BLOCK) * BLOCK
        # fp32 logits padded to whole blocks (the padding is -inf for max and argmax, 0 after exp()): reused
        self.logits = torch.empty(batch_size, padded, device=self.device)
        self.plain_head = type(self.head) is torch.nn.Linear
        self.head_out = torch.empty(batch_size, self.vocab, dtype=self.head.weight.dtype, device=self.device) \
            if self.plain_head else None
        # Refill once a quarter of the batch is free: each merge copies the cache once, as one decode step does.
        self.refill_min = max(1, batch_size // 4)
        self.compact_min = max(1, batch_size // 8)  # a finished row costs a row of compute per step until dropped
        self.mergeable = self._mergeable(DynamicCache(config=self.cache_config),
                                         getattr(model.config, "sliding_window", None))

    def new_cache(self):
        """A KV cache; where groups can merge, its layers write each step in place (_slot_layer)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.cache_config)
        if self.mergeable:
            cache.layers = [_slot_layer()(layer.is_sliding) for layer in cache.layers]
        return cache

    # --- the KV cache -------------------------------------------------------------------------------------------

    def prefill(self, ids: list[int], prompts: list[list[int]]) -> _Rows:
        """A group of prompts, left-padded to the longest, run through the model once."""
        import torch

        width = max(len(p) for p in prompts)
        tensor = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        # Positions count real tokens only, so every row sees the positions it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        seen = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=self.device)
        cache = self.new_cache()
        out = self.body(input_ids=tensor, attention_mask=mask, position_ids=positions, use_cache=True,
                        **{self.kv: cache})
        return _Rows(ids, cache, mask, positions[:, -1:], seen, out.last_hidden_state[:, -1].contiguous(),
                     [[] for _ in ids], [False] * len(ids))

    def _mergeable(self, cache, window: int | None) -> bool:
        """Whether groups can join a batch mid-decode: plain dynamic cache layers only, and every sequence within a
        sliding window, so a sliding layer never drops a token and can be kept like a full one."""
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        kinds = {type(layer) for layer in cache.layers}
        fits = not window or self.config.max_context_tokens + self.config.max_new_tokens < window - 1
        return kinds <= {DynamicLayer, DynamicSlidingWindowLayer} and fits

    def merge(self, rows: _Rows | None, new: _Rows) -> _Rows:
        """One batch of both: the narrower one's cache and mask left-padded to the wider's width."""
        import torch

        if rows is None:
            return new
        width = max(rows.mask.shape[1], new.mask.shape[1])
        for old_layer, new_layer in zip(rows.cache.layers, new.cache.layers):
            old_layer.assign(_stack_left_padded(old_layer.keys, new_layer.keys, width, dim=2),
                             _stack_left_padded(old_layer.values, new_layer.values, width, dim=2))
        mask = _stack_left_padded(rows.mask, new.mask, width, dim=1)
        seen_width = max(rows.seen.shape[1], new.seen.shape[1])
        seen = torch.cat([_pad_seen(rows.seen, seen_width), _pad_seen(new.seen, seen_width)])
        return _Rows(rows.ids + new.ids, rows.cache, mask, torch.cat([rows.positions, new.positions]), seen,
                     torch.cat([rows.hidden, new.hidden]), rows.tokens + new.tokens, rows.done + new.done)

    def drop_finished(self, rows: _Rows) -> _Rows | None:
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
        return _Rows([rows.ids[k] for k in keep], rows.cache, mask[:, start:].contiguous(), rows.positions[index],
                     rows.seen[index], rows.hidden[index], [rows.tokens[k] for k in keep], [False] * len(keep))

    def step(self, rows: _Rows) -> None:
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

    def sample(self, rows: _Rows) -> int:
        """Draw the next token of every unfinished row and apply the stop rules; returns how many rows finished."""
        import torch

        n = len(rows.ids)
        logits = self.logits[:n]
        if self.plain_head:
            torch.mm(rows.hidden, self.head.weight.t(), out=self.head_out[:n])
            logits[:, : self.vocab].copy_(self.head_out[:n])
        else:  # a LoRA-wrapped head (the "original" preset trains it): its own forward, adapter switch included
            logits[:, : self.vocab].copy_(self.head(rows.hidden))
        logits[:, self.vocab:].fill_(float("-inf"))
        if self.softcap:
            view = logits[:, : self.vocab]
            view.div_(self.softcap).tanh_().mul_(self.softcap)
        temps = self.temperatures[torch.tensor(rows.ids, device=self.device)]
        tokens = choose(logits, rows.seen, temps, self.config, self.generator, self.vocab).tolist()
        finished = 0
        for k, token in enumerate(tokens):
            if rows.done[k]:
                continue
            generated = rows.tokens[k]
            if token in self.stops:
                rows.done[k] = True
            else:
                generated.append(token)
                tail = self.twin.tokenizer.decode(generated[-8:], skip_special_tokens=False)
                rows.done[k] = any(stop in tail for stop in self.text_stops) \
                    or len(generated) >= self.config.max_new_tokens
            finished += rows.done[k]
        return finished


def choose(logits, seen, temperatures, config: GenerationConfig, generator, vocab: int):
    """Next token per row, drawn as generate._sample draws it (HF's processors), from fp32 logits whose columns
    past `vocab` are -inf. `logits` is overwritten; a temperature of 0 or less means greedy for that row."""
    import torch

    if config.repetition_penalty != 1.0:
        # HF's RepetitionPenaltyLogitsProcessor on the seen tokens only; a repeated id gets the same value twice.
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / config.repetition_penalty, picked * config.repetition_penalty)
        logits.scatter_(1, seen, picked)
    greedy = temperatures <= 0
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    best = logits.argmax(dim=-1) if bool(greedy.any()) else None
    scale = torch.where(greedy, 1.0, temperatures)[:, None]
    blocks = logits.view(logits.shape[0], -1, BLOCK)
    sums = torch.empty(blocks.shape[:2], device=logits.device)
    # A few rows at a time, so the five passes below find a row in the CPU cache (a 262k-vocabulary row is 1 MB).
    for start in range(0, logits.shape[0], CHUNK_ROWS):
        part = logits[start: start + CHUNK_ROWS]
        # softmax(l / T) without normalising: exp((l - max) / T), in place. Clamped at -80: below fp32's normal
        # range exp() takes a slow path (27x on this CPU), and the mass this adds is under 262,144 x e^-80 < 1e-29.
        part.sub_(part.amax(dim=-1, keepdim=True)).div_(scale[start: start + CHUNK_ROWS]).clamp_(min=-80.0).exp_()
        part[:, vocab:] = 0.0  # the padding columns: never drawn
        sums[start: start + CHUNK_ROWS] = blocks[start: start + CHUNK_ROWS].sum(-1)
    if config.top_p < 1.0:
        drawn = _top_p(logits, config.top_p, generator)
    else:
        block = torch.multinomial(sums, 1, generator=generator)
        inside = blocks.gather(1, block[:, :, None].expand(-1, 1, BLOCK)).squeeze(1)
        drawn = (block * BLOCK + torch.multinomial(inside, 1, generator=generator)).squeeze(-1)
    return torch.where(greedy, best, drawn) if best is not None else drawn


def _top_p(weights, top_p: float, generator):
    """generate._sample's nucleus (the most likely tokens until their mass crosses top_p, that one included),
    looked for among the top TOP_P_CANDIDATES first; rows whose nucleus is wider get a full sort."""
    import torch

    probs = weights / weights.sum(-1, keepdim=True)
    k = min(TOP_P_CANDIDATES, probs.shape[-1])
    values, order = probs.topk(k, dim=-1)
    if not bool((values.sum(-1) >= top_p).all()):
        values, order = probs.sort(dim=-1, descending=True)
    values = values.masked_fill(values.cumsum(-1) - values >= top_p, 0.0)
    return order.gather(1, torch.multinomial(values, 1, generator=generator)).squeeze(-1)


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
