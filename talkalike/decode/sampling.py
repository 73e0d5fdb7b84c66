"""The one sampler: the next token of every row, drawn as transformers' logits processors would draw it.

No run of `no_repeat_ngram` words twice inside a reply (tokens compared by the word they spell), repetition penalty
over every token already in the row (prompt included), temperature, then top-p; a row whose temperature is 0 or less
takes the argmax. The single-stream loop (stream.py) and eval's batches (batch.py) both draw through `Sampler`. On a 262k vocabulary whole-vocabulary passes cost more than the forward pass on a CPU, so:
the penalty touches the seen tokens only, and a token is drawn in two stages (a block of the vocabulary by its
mass, then a token inside it): the same distribution with one exp() pass. Nothing here reads a value back to the
host, so on a GPU the draw is queued behind the step like any other kernel.

    sampler = Sampler(config, vocab=len(tokenizer), rows=1, device=device)
    token = sampler(logits, seen_ids, [config.temperature])
"""

import contextlib
import functools

from talkalike.decode.config import GenerationConfig
from talkalike.decode.language import habit_scales, keep_mass

BLOCK = 512  # two-stage sampling: 262,144 = 512 x 512, so each stage draws from 512 values
TOP_P_CANDIDATES = 1024  # top-p looks for its nucleus among the most likely tokens first (exact; else a full sort)
CHUNK_ROWS = 2  # rows of logits transformed together while they sit in the CPU's L2 cache
# On a CUDA device, the no-repeat rule, and the penalty and the draw's weights, as Triton kernels
# (engines/triton_sampler.py; benchmarks/gpu_sampler.py times both ways; `kernels(False)` turns them off). Each has
# matched the torch ops on a GPU (tests/test_gpu.py) and under Triton's interpreter.
FUSED_REPEATS = True
FUSED_DRAW = True


@contextlib.contextmanager
def kernels(on: bool):
    """Within the block, every part of the sampler runs as a Triton kernel on a CUDA device (`on`) or as torch ops:
    the habits, the steer, the no-repeat rule, the penalty and the draw's weights; then the defaults are back
    (benchmarks compare the defaults, every kernel and none in one run)."""
    from talkalike.decode import language

    global FUSED_REPEATS, FUSED_DRAW
    saved = FUSED_REPEATS, FUSED_DRAW, language.FUSED_HABITS, language.FUSED_STEER
    FUSED_REPEATS = FUSED_DRAW = language.FUSED_HABITS = language.FUSED_STEER = on
    try:
        yield
    finally:
        FUSED_REPEATS, FUSED_DRAW, language.FUSED_HABITS, language.FUSED_STEER = saved


class Sampler:
    """Draws for one sampling config: owns the generator (seeded by config.seed) and a reused fp32 buffer whose
    width is whole blocks (the padding is -inf for max and argmax, 0 after exp())."""

    def __init__(self, config: GenerationConfig, vocab: int, rows: int, device, softcap: float | None = None,
                 separator_ids: list[int] = (), steer=None, shares: list[float | None] | None = None, habits=None,
                 words: "WordClasses | None" = None, starts=None, banned=None):
        import torch

        self.config, self.vocab, self.softcap = config, vocab, softcap
        # Language steering (decode/language.py) and each row's share, when config.steer_language is on.
        self.steer, self.shares = steer, shares
        # Token classes (emoji, laughs: ids or head columns, language.HABITS order) that keep their mass at
        # temperature 1 (language.py), then have it multiplied by the run's calibrated scale (habit_scales)
        self.habits = habits or []
        self.habit_bias = _habit_bias(self.habits, habit_scales(config))
        # Token ids (or head columns) no row ever draws: the emoji the persona never wrote (language.foreign_emoji)
        self.banned = banned if banned is not None and banned.numel() else None
        self.work = None  # keep_mass's scratch, [rows, vocab], made on first use
        # Runs that touch the message separator's tokens are never blocked: every message boundary is one.
        self.separator_ids = tuple(sorted(set(separator_ids)))
        self.separator = torch.tensor(self.separator_ids, dtype=torch.long, device=device)
        self.words = words  # the no-repeat rule compares words, not token ids (WordClasses)
        # Where a message starts (language.MessageStart): its first token is drawn at config.opener_temperature
        self.starts = starts if config.opener_temperature is not None else None
        self.generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
        # A fresh 30-70 MB tensor per step would cost page faults on every step: one buffer, reused.
        self.logits = torch.empty(rows, -(-vocab // BLOCK) * BLOCK, device=device)

    def __call__(self, logits, seen, temperatures: list[float], generated: list | None = None, blocked=None,
                 shares: list[float | None] | None = None, generators: list | None = None):
        """Next token id per row of `logits` [rows, vocab]; `seen` [rows, n] holds each row's ids so far (repeats
        change nothing), `temperatures` one value per row, `generated` each row's reply so far (1-D tensors), for
        the no-repeat rule, and `blocked` ([vocab] or [rows, vocab], True = never drawn) the tokens a reply may not
        use (turns.vocabulary); `shares` each row's opening-script share for the steer (default: the sampler's);
        `generators` one generator per row (None in it: the default one) instead of the sampler's own."""
        import torch

        n = logits.shape[0]
        buffer = self.logits[:n]
        buffer[:, : self.vocab].copy_(logits)
        buffer[:, self.vocab:].fill_(float("-inf"))
        if self.softcap:  # in fp32, as transformers applies it
            buffer[:, : self.vocab].div_(self.softcap).tanh_().mul_(self.softcap)
        if blocked is not None:
            buffer[:, : self.vocab].masked_fill_(blocked, float("-inf"))
        if self.banned is not None:
            buffer.index_fill_(1, self.banned, float("-inf"))
        if generated is not None and self.config.no_repeat_ngram > 1:
            block_repeats_rows(buffer, generated, self.config.no_repeat_ngram, self.separator, self.words)
        scales = self._opener_scales(temperatures, generated)
        if scales is not None and not any(torch.is_tensor(t) for t in scales):
            temperatures, scales = scales, None  # every message start known on the host: plain numbers
        # Each row's temperature as a [rows, 1] device tensor where a message start is known on the device only
        # (greedy rows 1, as choose() has them); None: `temperatures` say it all.
        on_device = None if scales is None else torch.stack([
            t.float() if torch.is_tensor(t) else torch.full((), t if t > 0 else 1.0, device=buffer.device)
            for t in scales])[:, None]
        if self.habits and (on_device is not None or any(t > 0 and t != 1 for t in temperatures)):
            scale = on_device if on_device is not None else temperatures[0] if len(set(temperatures)) == 1 else \
                host_values([t if t > 0 else 1.0 for t in temperatures], buffer.device)[:, None]
            if self.work is None or self.work.shape[0] < n:
                self.work = torch.empty(n, self.vocab, device=buffer.device)
            keep_mass(buffer[:, : self.vocab], self.habits, scale, self.work[:n])
        if self.habit_bias is not None:
            self._scale_habits(buffer, temperatures, on_device)
        # The steer last: it sets a message's opening script share from the draw's own masses at its temperature,
        # the habits' included (a laugh is written in a script too: "lol", "חחח")
        if self.steer is not None and generated is not None:
            self.steer.apply(buffer[:, : self.vocab], shares or self.shares or [None] * n, temperatures, generated,
                             scales)
        return choose(buffer, seen, temperatures, self.config, self.generator if generators is None else generators,
                      self.vocab, on_device)

    def _scale_habits(self, buffer, temperatures: list[float], on_device) -> None:
        """Multiply each scaled habit class's mass by its scale on the sampled rows: log(scale) added to its logits
        at the row's temperature (they are divided by it in the draw); greedy rows are left alone."""
        import torch

        if all(t <= 0 for t in temperatures):
            return
        ids, logs = self.habit_bias
        if on_device is not None:
            weights = on_device * host_values([float(t > 0) for t in temperatures], buffer.device)[:, None]
        else:
            weights = host_values([max(t, 0.0) for t in temperatures], buffer.device)[:, None]
        buffer.index_add_(1, ids, torch.mul(weights, logs))

    def _opener_scales(self, temperatures: list[float], generated: list | None) -> list | None:
        """Each row's temperature for this token when a sampled row is at the start of a message after the turn's
        first (None: no row is, or the rule is off): config.opener_temperature there, the row's own elsewhere; a
        0-dim tensor where the start is a device-side condition (decode/config.py says why)."""
        if self.starts is None or generated is None:
            return None
        opener = self.config.opener_temperature
        found, scales = False, []
        for temperature, reply in zip(temperatures, generated, strict=True):
            # the turn's first message answers the message in front of it: it opens at the reply's temperature
            start = self.starts(reply) if temperature > 0 and temperature != opener and len(reply) else False
            if start is False:
                scales.append(temperature)
            elif start is True:
                found = True
                scales.append(opener)
            else:
                found = True
                scales.append(temperature + (opener - temperature) * start)
        return scales if found else None

    def kind(self) -> tuple:
        """What this sampler does to a row apart from its seed and temperature: samplers of one kind draw together
        (`Together`)."""
        steer = self.steer
        return (self.config.repetition_penalty, self.config.top_p, self.config.no_repeat_ngram, self.softcap,
                self.vocab, self.separator_ids, tuple(map(id, self.habits)), habit_scales(self.config), id(self.banned),
                str(self.logits.device),
                id(self.words),
                self.config.opener_temperature, None if self.starts is None else tuple(self.starts.tail),
                None if steer is None else (steer.other, tuple(sorted(steer.shares.items())), id(steer.masks),
                                            tuple(steer.start_tail)))

    def widened(self, rows: int) -> "Sampler":
        """A sampler of the same kind for `rows` rows, with no generator of its own (rows bring theirs)."""
        import dataclasses

        return Sampler(dataclasses.replace(self.config, seed=None), self.vocab, rows, self.logits.device,
                       self.softcap, self.separator_ids, self.steer, None, self.habits, self.words, self.starts,
                       self.banned)


def _habit_bias(habits: list, scales: tuple[float, ...]):
    """(the ids of every habit class whose scale is not 1, each id's log(scale)) on the classes' device; None when
    nothing is scaled."""
    import math

    import torch

    chosen = [(ids, scale) for ids, scale in zip(habits, scales, strict=False) if ids.numel() and scale != 1.0]
    if not chosen:
        return None
    for _, scale in chosen:
        if not scale > 0:
            raise ValueError(f"a habit scale must be above 0, not {scale}")
    ids = torch.cat([ids for ids, _ in chosen])
    logs = torch.cat([torch.full((ids.numel(),), math.log(scale), device=ids.device) for ids, scale in chosen])
    return ids, logs


class Together:
    """Rows that each have their own Sampler (serve's batch: every request its own settings and seed), drawn in one
    call per kind of sampler instead of one per row. A sampler call launches some forty small kernels, and on a GPU
    eight rows' separate calls cost the host longer than the 7B step they follow. Each row keeps what its own
    sampler would give it: its temperature, its blocked tokens, its steer share, and its random stream (`draw` with
    one generator per row).

        together = Together(rows=8)
        tokens = together(samplers, logits, seen, temperatures, replies, blocked)    # [rows] token ids
    """

    def __init__(self, rows: int):
        self.rows = rows
        self.shared: dict[tuple, Sampler] = {}  # kind -> a sampler of that kind for `rows` rows
        self.calls = 0  # sampler calls made (for tests and benchmarks)

    def __call__(self, samplers: list[Sampler], logits, seen, temperatures: list[float], generated: list,
                 blocked: list):
        """Each row's next token id [rows]; per row: its sampler, logits row, seen ids, temperature, reply so far
        (1-D tensor) and blocked mask ([vocab] or None)."""
        import torch

        kinds: dict[tuple, list[int]] = {}
        for row, sampler in enumerate(samplers):
            kinds.setdefault(sampler.kind(), []).append(row)
        drawn = torch.empty(len(samplers), dtype=torch.long, device=logits.device)
        for kind, rows in kinds.items():
            shared = self.shared.get(kind)
            if shared is None or shared.logits.shape[0] < len(rows):
                shared = self.shared[kind] = samplers[rows[0]].widened(max(self.rows, len(rows)))
            pick = slice(None) if len(rows) == len(samplers) else host_values(rows, logits.device)
            own = [samplers[row] for row in rows]
            drawn[pick] = shared(logits[pick], seen[pick], [temperatures[row] for row in rows],
                                 [generated[row] for row in rows], _stacked([blocked[row] for row in rows]),
                                 shares=[s.shares[0] if s.shares else None for s in own],
                                 generators=[s.generator for s in own])
            self.calls += 1
        return drawn


def _stacked(masks: list):
    """One mask for the rows: None (none blocks), a shared [vocab] mask, or [rows, vocab] (None rows block nothing)."""
    import torch

    if all(mask is None for mask in masks):
        return None
    if all(mask is masks[0] for mask in masks):
        return masks[0]
    like = next(mask for mask in masks if mask is not None)
    return torch.stack([torch.zeros_like(like) if mask is None else mask for mask in masks])


def outside(allowed: list[int] | None, vocab: int, device):
    """A [vocab] mask, True on every token not in `allowed` (None: nothing is outside)."""
    import torch

    if allowed is None:
        return None
    blocked = torch.ones(vocab, dtype=torch.bool, device=device)
    blocked[torch.tensor(allowed, dtype=torch.long, device=device)] = False
    return blocked


def block_repeats(logits, reply, n: int, separator, words: "WordClasses | None" = None) -> None:
    """Set to -inf, in `logits` [vocab], every token that would repeat a run of `n` tokens already in `reply` (1-D),
    runs touching `separator` tokens aside. With `words`, tokens are compared by the word they spell (case and a
    leading space aside), every spelling of a banned one is banned, and a run inside one word is let be: "חחחח" is
    four tokens ("▁ח", "ח", "ח", "ח") and one word, a laugh and no loop (the eval's repeat measure reads words too).
    There only the spellings that would open a new word are banned, until the word is MAX_WORD_TOKENS long. Device
    ops only: on a GPU nothing waits for the host."""
    block_repeats_rows(logits[None], [reply], n, separator, words)


MAX_WORD_TOKENS = 10  # a word this many tokens long (a laugh, an emoji run) gets no more of a repeated run


def _left_padded(replies: list, pad: int):
    """[rows, longest] with each reply at the right end (its last token in the last column)."""
    from torch.nn.utils.rnn import pad_sequence

    try:
        return pad_sequence(replies, batch_first=True, padding_value=pad, padding_side="left")
    except TypeError:  # torch before 2.6 pads on the right only
        return pad_sequence([reply.flip(0) for reply in replies], batch_first=True, padding_value=pad).flip(1)


def block_repeats_rows(logits, replies: list, n: int, separator, words: "WordClasses | None" = None) -> None:
    """`block_repeats` for every row of `logits` [rows, vocab] at once (`replies`: each row's reply so far, 1-D
    tensors of any lengths): some thirty launches for the batch instead of that many per row, which on a GPU were
    most of a batched step's host time. Replies of different lengths are left-padded to one; what the padding would
    say (runs, word starts) is masked out."""
    import torch

    lengths = [int(reply.shape[0]) for reply in replies]
    width = max(lengths)
    if width < n:
        return
    device = logits.device
    ragged = min(lengths) < width
    padded = _left_padded(replies, 0) if ragged else replies[0][None] if len(replies) == 1 else torch.stack(replies)
    first = host_values([width - length for length in lengths], device) if ragged else None  # where each begins
    if logits.is_cuda and FUSED_REPEATS:  # one kernel instead of some thirty (engines/triton_sampler.py)
        from talkalike.decode.engines.triton_sampler import block_repeats_fused

        block_repeats_fused(logits, padded, first, n, separator, words)
        return
    raw = padded.unfold(1, n, 1)  # [rows, runs, n]: every run of n tokens so far
    ids = padded if words is None else words.of[padded]
    runs = raw if words is None else ids.unfold(1, n, 1)
    repeats = (runs[:, :, :-1] == ids[:, width - n + 1:, None].transpose(1, 2)).all(-1)  # runs the tail would redo
    if ragged:  # a run must lie inside the reply, and the tail it would redo too (shorter than n: none)
        repeats &= torch.arange(raw.shape[1], device=device)[None] >= first[:, None]
        repeats &= (first <= width - n)[:, None]
    if separator.numel():
        # Compared one by one, not with torch.isin: on a GPU isin sorts through unique() once there are more than a
        # dozen values, and unique() makes the host wait for the device on every token.
        touches = (raw[:, :, :, None] == separator).any(-1)  # [rows, runs, n]: which positions hold a separator
        repeats &= ~touches.any(-1) & ~touches[:, -1:, 1:].any(-1)
    # amin: a token banned by any run stays banned whatever the other runs say
    if words is None:
        banned = torch.where(repeats, float("-inf"), float("inf"))
        logits.scatter_reduce_(1, raw[:, :, -1], banned, reduce="amin", include_self=True)
        return
    # A word starts before position p where its token opens with a space or the one before p ends with one.
    starts = words.opens[padded[:, 1:]] | words.closes[padded[:, :-1]]  # [rows, width - 1]: before positions 1 ...
    # The run being completed crosses a word boundary before its last token: whatever that token, it is a loop.
    crossing = words.closes[padded[:, -1]]
    if n > 2:
        crossing = crossing | starts[:, width - n + 1:].any(-1)
    last_start = torch.where(starts, torch.arange(1, width, device=device)[None], 0).amax(-1)
    if ragged:
        last_start = torch.maximum(last_start, first)
    long_word = width - last_start >= MAX_WORD_TOKENS  # the word being written is already this long
    every = (crossing | long_word)[:, None, None]
    spellings = words.members[runs[:, :, -1]]  # [rows, runs, most spellings]: every spelling of each run's last word
    banned = torch.where(repeats[:, :, None] & (every | words.opens[spellings]), float("-inf"), float("inf"))
    logits.scatter_reduce_(1, spellings.flatten(1), banned.flatten(1), reduce="amin", include_self=True)


class WordClasses:
    """The tokens of a vocabulary grouped by the word each spells, case and a leading space aside ("ok", " ok", "OK"
    and " Ok" are one), so the no-repeat rule also stops the loops that come back in another spelling ("ok ok ok ok",
    the eval's repeat measure reads words case-blind). `of` [vocab]: each token's class; `members` [classes, k]: each
    class's tokens (at most MAX_SPELLINGS; short classes repeat their first). Tokens that spell nothing but space,
    bytes of a longer character, and ids past the tokenizer are classes of their own. `opens` / `closes` [vocab]:
    whether a token's text starts / ends with white space, so where words start inside a reply."""

    MAX_SPELLINGS = 16

    def __init__(self, texts: list[str], vocab: int, device):
        import numpy as np
        import torch

        keys, opens, closes = [], [False] * vocab, [False] * vocab
        for token in range(vocab):
            if token < len(texts) and texts[token]:
                opens[token], closes[token] = texts[token][0].isspace(), texts[token][-1].isspace()
            key = texts[token].strip().lower() if token < len(texts) else ""
            # a byte of a longer character (byte fallback) or nothing but space: a class of its own
            keys.append(f"\0{token}" if not key or "\ufffd" in key else key)
        _, of = np.unique(np.array(keys, dtype=object), return_inverse=True)
        order = np.argsort(of, kind="stable")  # tokens grouped by class, in id order inside each
        sizes = np.bincount(of)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        place = np.arange(vocab) - starts[of[order]]  # each token's place inside its class
        widest = min(int(sizes.max()), self.MAX_SPELLINGS)
        members = np.repeat(order[starts][:, None], widest, axis=1)  # short classes repeat their first token
        kept = place < widest
        members[of[order][kept], place[kept]] = order[kept]
        self.of = torch.as_tensor(of, dtype=torch.long).to(device)
        self.members = torch.as_tensor(members, dtype=torch.long).to(device)
        self.opens = torch.tensor(opens, dtype=torch.bool, device=device)
        self.closes = torch.tensor(closes, dtype=torch.bool, device=device)


def word_classes(tokenizer, vocab: int, device, config: GenerationConfig, columns: list[int] | None = None
                 ) -> WordClasses | None:
    """The vocabulary's WordClasses on `device` when the config blocks repeats (else None), built once per tokenizer
    (about a second for 262k tokens). `columns`: the token ids a restricted head computes, whose classes are then
    over those columns (the head's ids)."""
    import torch

    if config.no_repeat_ngram <= 1:
        return None
    if columns is not None:
        texts = _token_texts(tokenizer)
        return WordClasses([texts[i] if i < len(texts) else "" for i in columns], len(columns), torch.device(device))
    return _word_classes(tokenizer, vocab, torch.device(device))


@functools.lru_cache(maxsize=4)
def _token_texts(tokenizer) -> list[str]:
    """Each token's text alone, special tokens included."""
    ids = [[token] for token in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer decodes them 6x faster itself
    return backend.decode_batch(ids, skip_special_tokens=False) if backend is not None else tokenizer.batch_decode(ids)


@functools.lru_cache(maxsize=4)
def _word_classes(tokenizer, vocab: int, device) -> WordClasses:
    return WordClasses(_token_texts(tokenizer), vocab, device)


def choose(logits, seen, temperatures: list[float], config: GenerationConfig, generator, vocab: int, scale=None):
    """Next token per row from fp32 logits whose columns past `vocab` are -inf; `logits` is overwritten. `scale`:
    each row's temperature as a [rows, 1] tensor where it is a device-side value (greedy rows still by
    `temperatures`)."""
    import torch

    fused = logits.is_cuda and FUSED_DRAW  # the penalty and the first stage's weights in one kernel each
    if config.repetition_penalty != 1.0 and fused:
        from talkalike.decode.engines.triton_sampler import penalty_fused

        penalty_fused(logits, seen if seen.stride(1) == 1 else seen.contiguous(), config.repetition_penalty)
    elif config.repetition_penalty != 1.0:
        # HF's RepetitionPenaltyLogitsProcessor on the seen tokens only; a repeated id gets the same value twice.
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / config.repetition_penalty, picked * config.repetition_penalty)
        logits.scatter_(1, seen, picked)
    greedy = [t <= 0 for t in temperatures]
    if all(greedy):
        return logits.argmax(dim=-1)
    best = logits.argmax(dim=-1) if any(greedy) else None
    # One temperature (a single stream) stays a host number, so the draw never waits for a host-to-device copy.
    if scale is None:
        scale = temperatures[0] if len(set(temperatures)) == 1 else \
            host_values([t if t > 0 else 1.0 for t in temperatures], logits.device)[:, None]
    blocks = logits.view(logits.shape[0], -1, BLOCK)
    sums = torch.empty(blocks.shape[:2], device=logits.device)
    if fused:
        from talkalike.decode.engines.triton_sampler import weights_fused

        weights_fused(logits, scale, vocab, sums, BLOCK)
    # A few rows at a time, so the five passes below find a row in the CPU cache (a 262k-vocabulary row is 1 MB).
    for start in range(0, 0 if fused else logits.shape[0], CHUNK_ROWS):
        part = logits[start: start + CHUNK_ROWS]
        rows_scale = scale[start: start + CHUNK_ROWS] if torch.is_tensor(scale) else scale
        # softmax(l / T) without normalising: exp((l - max) / T), in place. Clamped at -80: below fp32's normal
        # range exp() takes a slow path on a CPU, and the mass this adds is under 262,144 x e^-80 < 1e-29.
        part.sub_(part.amax(dim=-1, keepdim=True)).div_(rows_scale).clamp_(min=-80.0).exp_()
        part[:, vocab:] = 0.0  # the padding columns: never drawn
        sums[start: start + CHUNK_ROWS] = blocks[start: start + CHUNK_ROWS].sum(-1)
    if config.top_p < 1.0:
        drawn = _top_p(logits, config.top_p, generator)
    else:
        block = draw(sums, generator)
        inside = blocks.gather(1, block[:, :, None].expand(-1, 1, BLOCK)).squeeze(1)
        drawn = (block * BLOCK + draw(inside, generator)).squeeze(-1)
    if best is None:
        return drawn
    return torch.where(host_values(greedy, logits.device), best, drawn)


def host_values(values: list, device):
    """A host list as a tensor on `device`. To a GPU it goes through pinned memory without blocking: a plain copy from
    the host would make the host wait for every kernel queued before it, the model's step included."""
    import torch

    tensor = torch.tensor(values)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _top_p(weights, top_p: float, generator):
    """The nucleus (the most likely tokens until their mass crosses top_p, that one included). On a CPU it is
    looked for among the top TOP_P_CANDIDATES first, rows whose nucleus is wider getting a full sort; on a GPU the
    full sort is cheap and checking would make the host wait for the device."""
    probs = weights / weights.sum(-1, keepdim=True)
    values = None
    if probs.device.type == "cpu":
        values, order = probs.topk(min(TOP_P_CANDIDATES, probs.shape[-1]), dim=-1)
        if not bool((values.sum(-1) >= top_p).all()):
            values = None
    if values is None:
        values, order = probs.sort(dim=-1, descending=True)
    values = values.masked_fill(values.cumsum(-1) - values >= top_p, 0.0)
    return order.gather(1, draw(values, generator)).squeeze(-1)


def draw(weights, generator):
    """One column per row of `weights` [rows, n], drawn in proportion to the weights (each row's sum must be positive):
    torch.multinomial(weights, 1)'s own method, the argmax of weights / Exp(1) noise, so the same generator draws the
    same columns, without its checks of the weights, which cost eight more kernel launches per draw (each draw of the
    single stream's loop runs two). `generator`: one for every row, or a list with one per row (rows drawn together
    that each keep their own random stream: a row's noise is the very noise its generator gives it drawn alone)."""
    import torch

    noise = torch.empty_like(weights)
    if isinstance(generator, list):
        for row, row_generator in zip(noise, generator, strict=True):
            row.exponential_(generator=row_generator)
    else:
        noise.exponential_(generator=generator)
    return torch.div(weights, noise, out=noise).argmax(dim=-1, keepdim=True)
