"""The habits' temperature-1 odds (language.keep_mass) as one Triton kernel, for the sampler on a CUDA GPU.

keep_mass in torch is some sixty small kernels a draw (four log-sum-exps, a loop over the classes, the gathers and
the scatter), each a few microseconds of device time behind the decode step: most of what the chat's draw costs the
device over the bare engine. Here one program per row makes two passes over the vocabulary's logits (the log-sum-exp
at temperature 1 and at T, online) and two over the habit columns (each class's log-sum-exp, then the rewrite), with
keep_mass's maths: the same closed form, the same bound on a class's move, non-finite shifts taken as none.

    keep_mass_fused(logits, classes, temperatures)     # CUDA, or the CPU under TRITON_INTERPRET=1 (the tests)
"""

import triton
import triton.language as tl

BLOCK_V = 2048  # vocabulary columns a program reads per iteration
BLOCK_K = 512  # habit columns per iteration
BLOCK_RUNS = 128  # a reply's positions (runs, word starts) per iteration


@triton.jit
def _lse_update(m, s, x):
    """Online log-sum-exp: the running max `m` and sum `s` of exp(. - m), with a block `x` added."""
    new = tl.maximum(m, tl.max(x, 0))
    safe = tl.where(new == float("-inf"), 0.0, new)  # all -inf so far: keep the sum at 0, not nan
    s = s * tl.exp(m - safe) + tl.sum(tl.exp(x - safe), 0)
    return new, s


@triton.jit
def _lse(m, s):
    return tl.where(s > 0, tl.log(s) + m, float("-inf"))


@triton.jit
def _log_rest(whole, part):
    """log(e^whole - e^part), the log-sum-exp of the columns outside `part` (keep_mass's log_rest), with expm1's
    precision where `part` holds nearly all the mass (a series there: its error is under 1e-9)."""
    d = part - whole
    expm1 = tl.where(tl.abs(d) < 1e-2, d + d * d * 0.5 + d * d * d / 6.0, tl.exp(d) - 1.0)
    return whole + tl.log(tl.maximum(-expm1, 1e-12))


@triton.jit
def _finite_or_zero(x):
    return tl.where((x == x) & (tl.abs(x) != float("inf")), x, 0.0)


@triton.jit
def _lse_at_one_and_t(base, ids_ptr, cls_ptr, n, t, c, GATHER: tl.constexpr, CLASS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """The log-sum-exp at temperature 1 and at `t` of a row's columns 0..n-1, online (GATHER: of the columns
    ids[0..n-1] instead; CLASS: of those whose class is `c`)."""
    m1 = float("-inf")
    s1 = 0.0
    mt = float("-inf")
    st = 0.0
    for start in range(0, n, BLOCK):
        k = start + tl.arange(0, BLOCK)
        ok = k < n
        if CLASS:
            ok = ok & (tl.load(cls_ptr + k, mask=ok, other=-1) == c)
        if GATHER:
            columns = tl.load(ids_ptr + k, mask=ok, other=0)
        else:
            columns = k
        x = tl.load(base + columns, mask=ok, other=float("-inf"))
        m1, s1 = _lse_update(m1, s1, x)
        mt, st = _lse_update(mt, st, x / t)
    return _lse(m1, s1), _lse(mt, st)


@triton.jit
def _keep_mass_kernel(logits_ptr, row_stride, temps_ptr, ids_ptr, cls_ptr, max_shift, V, K,
                      CLASSES: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row * row_stride
    t = tl.load(temps_ptr + row)
    # The whole vocabulary's log-normaliser at 1 and at T, and the habit columns' (keep_mass: whole_one, whole_t,
    # habits_one, habits_t).
    whole_one, whole_t = _lse_at_one_and_t(base, ids_ptr, cls_ptr, V, t, 0, GATHER=False, CLASS=False, BLOCK=BLOCK_V)
    habits_one, habits_t = _lse_at_one_and_t(base, ids_ptr, cls_ptr, K, t, 0, GATHER=True, CLASS=False,
                                             BLOCK=BLOCK_K)
    shift = _finite_or_zero((_log_rest(whole_t, habits_t) - _log_rest(whole_one, habits_one)) * t)
    # Each class's move, bounded: its log-sum-exp at T before (chosen / T) and after (chosen + shift / T).
    for c in tl.static_range(CLASSES):
        class_one, class_t = _lse_at_one_and_t(base, ids_ptr, cls_ptr, K, t, c, GATHER=True, CLASS=True,
                                               BLOCK=BLOCK_K)
        change = _finite_or_zero(class_one + shift / t - class_t)
        excess = change - tl.minimum(tl.maximum(change, -max_shift), max_shift)
        for start in range(0, K, BLOCK_K):
            k = start + tl.arange(0, BLOCK_K)
            own = (k < K) & (tl.load(cls_ptr + k, mask=k < K, other=-1) == c)
            ids = tl.load(ids_ptr + k, mask=own, other=0)
            x = tl.load(base + ids, mask=own, other=0.0)
            tl.store(base + ids, x * t + shift - excess * t, mask=own)


# ids of the class tensors -> (the classes, their ids as one tensor, each id's class)
_COLUMNS: dict[tuple, tuple] = {}


def _columns(classes: tuple) -> tuple:
    """The classes' ids as one tensor and each id's class index, made once per set of class tensors (language.py
    caches those per tokenizer and device; the entry holds them, so their ids are not reused)."""
    import torch

    key = tuple(map(id, classes))
    if key not in _COLUMNS:
        owner = [torch.full((c.numel(),), n, dtype=torch.int32, device=c.device) for n, c in enumerate(classes)]
        _COLUMNS[key] = (classes, torch.cat(classes), torch.cat(owner))
    return _COLUMNS[key][1:]


def keep_mass_fused(logits, classes: list, temperatures, max_shift: float) -> None:
    """language.keep_mass on `logits` [rows, vocab] (fp32, rows contiguous), in place, in one kernel launch (and a
    fill when `temperatures` is one number)."""
    import torch

    classes = tuple(ids for ids in classes if ids.numel())
    if not classes:
        return
    ids, owner = _columns(classes)
    rows, vocab = logits.shape
    assert logits.stride(1) == 1 and logits.dtype == torch.float32
    if torch.is_tensor(temperatures):
        temps = temperatures.reshape(-1).float()
    else:
        temps = torch.full((rows,), float(temperatures), device=logits.device)
    _keep_mass_kernel[(rows,)](logits, logits.stride(0), temps, ids, owner, float(max_shift), vocab, ids.numel(),
                               CLASSES=len(classes), BLOCK_V=BLOCK_V, BLOCK_K=BLOCK_K, num_warps=8)


@triton.jit
def _block_repeats_kernel(logits_ptr, row_stride, padded_ptr, width, first_ptr, sep_ptr, S, of_ptr, opens_ptr,
                          closes_ptr, members_ptr, SPELLINGS, N: tl.constexpr, WORDS: tl.constexpr,
                          RAGGED: tl.constexpr, MAX_WORD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    reply = padded_ptr + row * width
    out = logits_ptr + row * row_stride
    if RAGGED:
        first = tl.load(first_ptr + row).to(tl.int32)
    else:
        first = 0
    # The tail: the last N - 1 tokens (their words), which a run's first N - 1 must equal; one touching the message
    # separator means no run is a loop.
    tail_clear = width >= N
    for j in tl.static_range(N - 1):
        tail = tl.load(reply + width - N + 1 + j)
        for s in range(S):
            tail_clear = tail_clear & (tail != tl.load(sep_ptr + s))
    every = False
    if WORDS:
        # Whether the next token starts a new word: the last one ends with a space, or a word starts inside the
        # run being completed; or the word being written is already MAX_WORD tokens long. Then every spelling of a
        # repeated word is banned, else only those that open a new word.
        every = tl.load(closes_ptr + tl.load(reply + width - 1)) != 0
        last_start = first
        for start in range(1, width, BLOCK):
            p = start + tl.arange(0, BLOCK)
            ok = p < width
            token = tl.load(reply + p, mask=ok, other=0)
            before = tl.load(reply + p - 1, mask=ok, other=0)
            starts = ((tl.load(opens_ptr + token, mask=ok, other=0) != 0)
                      | (tl.load(closes_ptr + before, mask=ok, other=0) != 0)) & ok
            last_start = tl.maximum(last_start, tl.max(tl.where(starts, p, 0), 0))
            if N > 2:
                every = every | (tl.sum((starts & (p >= width - N + 2)).to(tl.int32), 0) > 0)
        every = every | (width - last_start >= MAX_WORD)
    for start in range(0, width - N + 1, BLOCK):
        i = start + tl.arange(0, BLOCK)
        repeats = (i <= width - N) & (i >= first)
        for j in tl.static_range(N):
            token = tl.load(reply + i + j, mask=repeats, other=0)
            for s in range(S):
                repeats = repeats & (token != tl.load(sep_ptr + s))
            if j < N - 1:
                tail = tl.load(reply + width - N + 1 + j)
                if WORDS:
                    repeats = repeats & (tl.load(of_ptr + token, mask=repeats, other=-1) == tl.load(of_ptr + tail))
                else:
                    repeats = repeats & (token == tail)
        # (scalars broadcast to the block first: Triton's interpreter refuses masks made from a one-element one)
        repeats = repeats & (tl.zeros([BLOCK], dtype=tl.int1) | tail_clear)
        # `token` is each run's last: the one the tail would redo
        if WORDS:
            every_row = tl.zeros([BLOCK], dtype=tl.int1) | every
            word = tl.load(of_ptr + token, mask=repeats, other=0)
            for k in range(SPELLINGS):
                spelling = tl.load(members_ptr + word * SPELLINGS + k, mask=repeats, other=0)
                banned = repeats & ((tl.load(opens_ptr + spelling, mask=repeats, other=0) != 0) | every_row)
                tl.store(out + spelling, float("-inf"), mask=banned)
        else:
            tl.store(out + token, float("-inf"), mask=repeats)


def block_repeats_fused(logits, padded, first, n: int, separator, words) -> None:
    """sampling.block_repeats_rows's bans in one kernel launch: `padded` [rows, width] the replies left-padded to
    one width (width >= n), `first` [rows] where each reply begins (None: none is padded), `words` WordClasses or
    None; -inf written into `logits` [rows, >= vocab] (rows contiguous) on every banned token."""
    from talkalike.decode.sampling import MAX_WORD_TOKENS

    rows, width = padded.shape
    padded = padded.contiguous()
    table = (words.of, words.opens, words.closes, words.members) if words is not None else (padded,) * 4
    _block_repeats_kernel[(rows,)](
        logits, logits.stride(0), padded, width, padded if first is None else first, separator, separator.numel(),
        *table, words.members.shape[1] if words is not None else 0, N=n, WORDS=words is not None,
        RAGGED=first is not None, MAX_WORD=MAX_WORD_TOKENS, BLOCK=BLOCK_RUNS, num_warps=4)


@triton.jit
def _steer_kernel(line_ptr, masks_ptr, V, t_ptr, t_value, start_ptr, share, max_shift, T_TENSOR: tl.constexpr,
                  START_TENSOR: tl.constexpr, BLOCK: tl.constexpr):
    if T_TENSOR:
        t = tl.load(t_ptr).to(tl.float32)
    else:
        t = t_value
    # The probability the two scripts' tokens hold at temperature t: a softmax's sums, online.
    m = float("-inf")
    total = 0.0
    latin = 0.0
    other = 0.0
    for start in range(0, V, BLOCK):
        v = start + tl.arange(0, BLOCK)
        ok = v < V
        y = tl.load(line_ptr + v, mask=ok, other=float("-inf")) / t
        new = tl.maximum(m, tl.max(y, 0))
        safe = tl.where(new == float("-inf"), 0.0, new)
        rescale = tl.exp(m - safe)
        weight = tl.exp(y - safe)
        total = total * rescale + tl.sum(weight, 0)
        latin = latin * rescale + tl.sum(weight * tl.load(masks_ptr + 2 * v, mask=ok, other=0.0), 0)
        other = other * rescale + tl.sum(weight * tl.load(masks_ptr + 2 * v + 1, mask=ok, other=0.0), 0)
        m = new
    latin = tl.maximum(latin / total, 1e-12)
    other = tl.maximum(other / total, 1e-12)
    both = latin + other
    shift_latin = tl.minimum(tl.maximum(tl.log((1 - share) * both / latin), -max_shift), max_shift)
    shift_other = tl.minimum(tl.maximum(tl.log(share * both / other), -max_shift), max_shift)
    shift_latin = tl.where(shift_latin == shift_latin, shift_latin, 0.0) * t
    shift_other = tl.where(shift_other == shift_other, shift_other, 0.0) * t
    if START_TENSOR:  # a device-side condition: no shift unless it holds
        at_start = tl.load(start_ptr).to(tl.float32)
        shift_latin = shift_latin * at_start
        shift_other = shift_other * at_start
    for start in range(0, V, BLOCK):
        v = start + tl.arange(0, BLOCK)
        ok = v < V
        x = tl.load(line_ptr + v, mask=ok, other=0.0)
        x += tl.load(masks_ptr + 2 * v, mask=ok, other=0.0) * shift_latin
        x += tl.load(masks_ptr + 2 * v + 1, mask=ok, other=0.0) * shift_other
        tl.store(line_ptr + v, x, mask=ok)


def steer_fused(line, masks, share: float, temperature, start, max_shift: float) -> None:
    """language.Steer.apply's rescaling of one row `line` [vocab] (fp32, contiguous) in one kernel launch: `masks`
    [vocab, 2] (contiguous), `temperature` a number or a 0-dim device tensor, `start` the message-start condition
    (a bool, or a 0-dim device tensor)."""
    import torch

    if start is False:
        return
    assert line.is_contiguous() and masks.is_contiguous() and line.dtype == torch.float32
    t_tensor, start_tensor = torch.is_tensor(temperature), torch.is_tensor(start)
    _steer_kernel[(1,)](line, masks.float() if masks.dtype != torch.float32 else masks, line.shape[0],
                        temperature if t_tensor else line, 1.0 if t_tensor else float(temperature),
                        start if start_tensor else line, float(share), float(max_shift), T_TENSOR=t_tensor,
                        START_TENSOR=start_tensor, BLOCK=BLOCK_V, num_warps=8)


@triton.jit
def _penalty_kernel(logits_ptr, row_stride, seen_ptr, seen_stride, scratch_ptr, n, penalty, BLOCK: tl.constexpr):
    """The repetition penalty on every seen token of a row, each once however often seen: all the seen logits are
    read (into `scratch`) before any is written, as gather-then-scatter does."""
    row = tl.program_id(0)
    out = logits_ptr + row * row_stride
    for start in range(0, n, BLOCK):
        k = start + tl.arange(0, BLOCK)
        ok = k < n
        ids = tl.load(seen_ptr + row * seen_stride + k, mask=ok, other=0)
        x = tl.load(out + ids, mask=ok, other=0.0)
        tl.store(scratch_ptr + row * n + k, tl.where(x > 0, x / penalty, x * penalty), mask=ok)
    tl.debug_barrier()
    for start in range(0, n, BLOCK):
        k = start + tl.arange(0, BLOCK)
        ok = k < n
        ids = tl.load(seen_ptr + row * seen_stride + k, mask=ok, other=0)
        tl.store(out + ids, tl.load(scratch_ptr + row * n + k, mask=ok, other=0.0), mask=ok)


@triton.jit
def _weights_kernel(logits_ptr, row_stride, sums_ptr, width, vocab, t_ptr, t_value, T_TENSOR: tl.constexpr,
                    DRAW_BLOCK: tl.constexpr, TILE: tl.constexpr):
    """A row's unnormalised softmax at its temperature, exp(max((l - max) / T, -80)), in place (0 past `vocab`), and
    its sum over every DRAW_BLOCK columns into `sums` (sampling.choose's first stage)."""
    row = tl.program_id(0)
    base = logits_ptr + row * row_stride
    if T_TENSOR:
        t = tl.load(t_ptr + row)
    else:
        t = t_value
    peak = float("-inf")
    for start in range(0, width, TILE):
        v = start + tl.arange(0, TILE)
        peak = tl.maximum(peak, tl.max(tl.load(base + v, mask=v < width, other=float("-inf")), 0))
    blocks = width // DRAW_BLOCK
    for start in range(0, width, TILE):
        v = start + tl.arange(0, TILE)
        ok = v < width
        x = tl.load(base + v, mask=ok, other=float("-inf"))
        y = tl.exp(tl.maximum((x - peak) / t, -80.0))
        y = tl.where(v < vocab, y, 0.0)
        tl.store(base + v, y, mask=ok)
        block = start // DRAW_BLOCK + tl.arange(0, TILE // DRAW_BLOCK)
        tl.store(sums_ptr + row * blocks + block, tl.sum(tl.reshape(y, (TILE // DRAW_BLOCK, DRAW_BLOCK)), 1),
                 mask=block < blocks)


def penalty_fused(logits, seen, penalty: float) -> None:
    """HF's repetition penalty on `logits` [rows, >= vocab] over each row's `seen` ids [rows, n], in one launch."""
    import torch

    rows, n = seen.shape
    assert seen.stride(1) == 1 and logits.stride(1) == 1
    scratch = torch.empty(rows, n, device=logits.device)
    _penalty_kernel[(rows,)](logits, logits.stride(0), seen, seen.stride(0), scratch, n, float(penalty),
                             BLOCK=BLOCK_K, num_warps=4)


def weights_fused(logits, scale, vocab: int, sums, draw_block: int) -> None:
    """sampling.choose's exp((l - max) / T) in place and the per-block sums `sums` [rows, width / draw_block], in one
    launch: `logits` [rows, width] fp32 (rows contiguous, -inf past `vocab`), `scale` one number for every row or a
    [rows, 1] device tensor."""
    import torch

    rows, width = logits.shape
    assert logits.stride(1) == 1 and width % draw_block == 0 and sums.is_contiguous()
    tile = max(draw_block, 8 * draw_block if width >= 8 * draw_block else draw_block)
    t_tensor = torch.is_tensor(scale)
    _weights_kernel[(rows,)](logits, logits.stride(0), sums, width, vocab,
                             scale.reshape(-1).float().contiguous() if t_tensor else logits,
                             1.0 if t_tensor else float(scale), T_TENSOR=t_tensor, DRAW_BLOCK=draw_block, TILE=tile,
                             num_warps=8)
