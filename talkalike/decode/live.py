"""Serve's continuous batching: concurrent replies decoded together, each streaming its own tokens as they are drawn.

A reply that finds the model idle decodes alone on the twin's engine (stream.py's path: as fast as one chat, CUDA
graphs and all). When another reply arrives, the lone one hands over between two tokens: its prompt and the tokens
drawn so far are prefilled into a batch (batch.py's prefill, merge, drop and step) that one worker thread decodes
for every reply together (on a GPU, slots.py: one compiled step for every row). Replies join and leave between
steps. Each keeps its own Sampler (temperature, top_p, penalties, seed, allowed tokens), so a reply reads the same
batched as alone; rows whose samplers differ only in seed and temperature draw in one call (sampling.Together).
Replies with the adapter off (the base, for the A/B switch) form a second batch, stepped in
turn with the first. A reply too long to share a batch (a sliding window would drop its tokens) waits for the model
to be free and decodes alone, as serve did before.

    live = Live(twin)
    events = stream_reply(twin, history, config, draw=live.draw)    # what serve's requests iterate, each in a thread
"""

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from talkalike.decode.batch import PREFILL_ROWS, Batch, Rows
from talkalike.decode.config import GenerationConfig
from talkalike.decode.sampling import Together
from talkalike.decode.slots import MAX_LEN, Slots
from talkalike.decode.stream import reply_sampler, tokens
from talkalike.decode.twin import Twin
from talkalike.model import causal_lm


@dataclass(eq=False)
class Reply:
    """One reply being drawn: how it samples, what it has drawn, and the queue its reader takes the tokens from."""

    prompt: list[int]
    config: GenerationConfig
    use_adapter: bool
    sampler: Any
    blocked: Any  # [vocab] True on tokens this reply may not use (turns.vocabulary), or None
    tokens: list[int] = field(default_factory=list)  # drawn and handed to the reader
    pending: int | None = None  # drawn alone but not handed yet when it moved to the batch (a GPU draws one ahead)
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # token ids, then None; or an exception
    handover: bool = False  # set while it decodes alone: another reply is waiting for the model
    closed: bool = False  # its reader went away: the worker drops its row
    # `tokens` on the model's device, for the sampler's no-repeat rule: made once when the reply joins a batch, then
    # grown on the device by each drawn token, so no step copies it from the host (a blocking copy on a GPU, eight
    # of them a step with eight rows).
    generated: Any = None


class Live:
    """The replies of one twin: one decoding alone, or a worker thread's batches (one per adapter state)."""

    def __init__(self, twin: Twin, rows: int = 8):
        self.twin, self.size = twin, rows
        self.changed = threading.Condition()
        self.solo: Reply | None = None  # the reply decoding alone, in its reader's thread
        self.waiting: list[Reply] = []  # replies handed to the worker, not yet in a batch
        self.held: set[Reply] = set()  # replies the worker holds, waiting or batched
        self.lanes: dict[bool, Rows] = {}  # use_adapter -> the rows decoding together
        self.batches: dict[bool, tuple] = {}  # use_adapter -> its Batch (or Slots) and the twin it runs
        self.limit = 0  # longest prompt + reply that can share a batch (a sliding window would drop its tokens)
        self.worker: threading.Thread | None = None
        self.working = False  # the worker holds the model (its rows, the adapter state): nothing may decode alone
        self.widest = 0  # the most rows one step has decoded together (for tests and benchmarks)
        # Each row draws with its own sampler, rows whose samplers differ only in seed and temperature in one call
        self.together = Together(rows)
        # On a GPU the next step is queued before the readers hear of this one: their text work, and the GIL it
        # takes, then overlaps the device's step instead of delaying its launch. A CPU computes the step where it is
        # called, so there each reader gets its token first. None: by the twin's device, once the batches are built.
        self.launch_first: bool | None = None

    def draw(self, twin: Twin, prompt_ids: list[int], config: GenerationConfig, use_adapter: bool,
             history: list[dict] | None = None) -> Iterator[int]:
        """stream.py's `draw`: the reply's token ids, alone or batched, ending at a stop id or max_new_tokens."""
        assert twin is self.twin, "a Live serves the twin it was made for"
        reply = Reply(prompt_ids, config, use_adapter, *reply_sampler(twin, twin.device, prompt_ids, config, history))
        with self.changed:
            self._prepare()
            shares = len(prompt_ids) + config.max_new_tokens <= self.limit
            if not shares:  # too long to share a batch: it waits for the model to be free, then holds it
                self.changed.wait_for(self._free)
            alone = self._free()
            if alone:
                self.solo = reply
            else:
                if self.solo is not None:
                    self.solo.handover = True
                self._hand_to_worker(reply)
        if alone:
            yield from self._alone(reply, shares)
        else:
            yield from self._batched(reply)

    def running(self) -> int:
        """Replies being decoded now, alone or batched."""
        with self.changed:
            return len(self.held) + (self.solo is not None)

    def idle(self) -> bool:
        """Whether nothing uses the model."""
        with self.changed:
            return self._free()

    def _free(self) -> bool:
        return self.solo is None and not self.held and not self.working

    # --- alone, in the reader's thread ---------------------------------------------------------------------------

    def _alone(self, reply: Reply, shares: bool) -> Iterator[int]:
        """stream.draw_alone's loop over the reply's own sampler, until the reply ends or another asks to share."""
        twin, config = self.twin, reply.config
        engine = twin.engine(len(reply.prompt) + config.max_new_tokens, reply.use_adapter)
        start, drawn = len(reply.prompt), []

        def sample(logits, seen):
            token = reply.sampler(logits, seen, [config.temperature], [seen[0, start:]], reply.blocked)
            drawn.append(token)
            return token

        ids = tokens(engine, reply.prompt, config.max_new_tokens, sample, twin.stop_ids)
        moved = False
        try:
            with twin.adapter(reply.use_adapter):
                for token_id in ids:
                    reply.tokens.append(token_id)
                    yield token_id
                    if shares and reply.handover and len(reply.tokens) < config.max_new_tokens:
                        break
                else:
                    return
            ids.close()
            # On a GPU the loop has drawn the next token already (stream.tokens reads token t while step t+1 runs):
            # it is the reply's next, whatever the batch would draw, so a seeded reply stays on its random stream.
            reply.pending = int(drawn[len(reply.tokens)]) if len(drawn) > len(reply.tokens) else None
            with self.changed:
                self.solo = None
                self._hand_to_worker(reply)
            moved = True
        finally:
            ids.close()
            if not moved:
                with self.changed:
                    self.solo = None
                    self.changed.notify_all()
        yield from self._batched(reply)

    # --- batched, in the worker's thread ---------------------------------------------------------------------------

    def _batched(self, reply: Reply) -> Iterator[int]:
        """The tokens the worker draws for `reply`; closing this drops its row."""
        try:
            while (item := reply.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reply.closed = True

    def _prepare(self) -> None:
        """The batches (built on the first reply), and the longest sequence that may join one."""
        if self.batches:
            return
        import dataclasses

        twin = self.twin
        if self.launch_first is None:
            self.launch_first = twin.device.type == "cuda"
        lm = causal_lm(twin.model)
        window = getattr(lm.config, "sliding_window", None)
        limit = window - 2 if window else (twin.max_positions or 1 << 30)
        # A config whose every sequence fits the window: batch.py then keeps each layer's cache whole and lets rows
        # join mid-decode. Its own sampler is not used; each reply brings its own.
        bound = dataclasses.replace(twin.defaults, max_context_tokens=limit, max_new_tokens=0)
        base = self._backend(twin, bound)
        self.batches = {False: (base, twin), True: (base, twin)}
        if twin.merged_model is not None:  # tuned rows decode the merged copy, as a lone tuned reply does
            merged = dataclasses.replace(twin, model=twin.merged_model, has_adapter=False, merged_model=None,
                                         engines={})
            self.batches[True] = (self._backend(merged, bound), merged)
        slots = [b.max_len - 2 for b, _ in self.batches.values() if isinstance(b, Slots)]
        self.limit = min([limit, *slots]) if base.mergeable else 0
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)

    def _backend(self, twin: Twin, bound: GenerationConfig) -> "Batch | Slots":
        """Slots (one compiled step for every row) for a Llama-family model on a GPU, else batch.py's Batch."""
        from talkalike.decode.engines.cuda_graph import FusedStep

        if twin.device.type == "cuda" and FusedStep.supports(twin.model, MAX_LEN):
            return Slots(twin.model, self.size)
        return Batch(twin, bound, self.size, temperatures=[])

    def _hand_to_worker(self, reply: Reply) -> None:
        """Queue `reply` for the next batch step (the lock held)."""
        self.waiting.append(reply)
        self.held.add(reply)
        if self.worker is None:
            self.worker = threading.Thread(target=self._work, name="talkalike-batch", daemon=True)
            self.worker.start()
        self.changed.notify_all()

    def _work(self) -> None:
        """The worker: admit waiting replies, then one step of every batch; forever, sleeping while idle."""
        import torch

        while True:
            with self.changed:
                # Between two steps, outside any adapter context: with no rows left, the model is free again.
                self.working = bool(self.lanes)
                self.changed.notify_all()
                self.changed.wait_for(lambda: self.solo is None and self.held)
                self.working = True
                joining, self.waiting = self.waiting, []
            try:
                with torch.inference_mode():
                    for use_adapter in (True, False):
                        self._join(use_adapter, [r for r in joining if r.use_adapter == use_adapter])
                    for use_adapter in list(self.lanes):
                        self._step(use_adapter)
            except Exception as error:  # noqa: BLE001 - every reader in the batch hears of it; the next start afresh
                failed = set(joining).union(*(rows.ids for rows in self.lanes.values()))
                self.lanes = {}
                for batch, _ in self.batches.values():
                    if isinstance(batch, Slots):
                        batch.free = list(range(batch.rows))
                with self.changed:
                    failed &= self.held
                    for reply in failed:
                        reply.out.put(error)
                    self._finished(list(failed))

    def _finished(self, replies: list[Reply]) -> None:
        """The worker is done with `replies` (the lock held or not)."""
        with self.changed:
            self.held.difference_update(replies)
            self.changed.notify_all()

    def _join(self, use_adapter: bool, replies: list[Reply]) -> None:
        """Prefill new rows (prompt and what each drew alone) and merge them into their batch."""
        import torch

        if not replies:  # entering twin.adapter(False) walks every LoRA layer: 18 ms a step on the 270M model's CPU
            return
        ready, ended = [], []
        for reply in replies:
            if reply.pending is not None:
                token, reply.pending = reply.pending, None
                if not self._accept(reply, token):
                    ended.append(reply)
                    continue
            (ended if reply.closed else ready).append(reply)
        self._finished(ended)
        batch, twin = self.batches[use_adapter]
        for reply in ready:
            reply.generated = torch.tensor(reply.tokens, dtype=torch.long, device=batch.device)
        with twin.adapter(use_adapter):
            for start in range(0, len(ready), PREFILL_ROWS):
                part = ready[start: start + PREFILL_ROWS]
                new = batch.prefill(part, [r.prompt + r.tokens for r in part])
                new.tokens = [r.tokens for r in part]  # Batch.step feeds each row its last token
                self.lanes[use_adapter] = batch.merge(self.lanes.get(use_adapter), new)

    def _step(self, use_adapter: bool) -> None:
        """Draw each row's next token with its own sampler, hand it over, drop ended rows, run the model once."""
        import torch

        rows = self.lanes[use_adapter]
        batch, twin = self.batches[use_adapter]
        self.widest = max(self.widest, len(rows.ids))
        with twin.adapter(use_adapter):
            logits = batch.logits(rows)
            if self.softcap:  # as the model's own forward applies it, in its dtype
                logits = torch.tanh(logits / self.softcap) * self.softcap
            replies = rows.ids
            drawn = self.together([r.sampler for r in replies], logits, rows.seen,
                                  [r.config.temperature for r in replies], [r.generated for r in replies],
                                  [r.blocked for r in replies])
            for k, reply in enumerate(replies):
                reply.generated = torch.cat([reply.generated, drawn[k: k + 1]])
            drawn = drawn.tolist()  # one read back for every row
            going = [self._take(reply, token) for reply, token in zip(replies, drawn, strict=True)]
            rows.done = [reply.closed or not goes for reply, goes in zip(replies, going, strict=True)]
            finished = [reply for reply, done in zip(replies, rows.done, strict=True) if done]
            if finished:
                rows = batch.drop_finished(rows)
            if not self.launch_first:
                self._hand_all(replies, drawn, going)
            try:
                if rows is None:
                    del self.lanes[use_adapter]
                else:
                    self.lanes[use_adapter] = rows
                    batch.step(rows)
            finally:  # (also when the step fails: the finished replies end, the others then hear of the error)
                if self.launch_first:
                    self._hand_all(replies, drawn, going)
                if finished:
                    self._finished(finished)

    def _take(self, reply: Reply, token: int) -> bool:
        """Record `token` as the reply's next (a stop id ends it unrecorded); whether the reply goes on (not a stop
        id, below max_new_tokens)."""
        if token in self.twin.stop_ids:
            return False
        reply.tokens.append(token)
        return len(reply.tokens) < reply.config.max_new_tokens

    def _hand(self, reply: Reply, token: int, goes_on: bool) -> None:
        """Give the reader `token` (unless a stop id) and, when the reply ends, the end."""
        if token not in self.twin.stop_ids:
            reply.out.put(token)
        if not goes_on:
            reply.out.put(None)

    def _hand_all(self, replies: list[Reply], tokens: list[int], going: list[bool]) -> None:
        for reply, token, goes_on in zip(replies, tokens, going, strict=True):
            self._hand(reply, token, goes_on)

    def _accept(self, reply: Reply, token: int) -> bool:
        """Record `token` and hand it to the reader; whether the reply goes on."""
        goes_on = self._take(reply, token)
        self._hand(reply, token, goes_on)
        return goes_on
