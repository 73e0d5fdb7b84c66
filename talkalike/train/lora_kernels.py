"""LoRA's dropout inside its r-wide products: Triton kernels that draw the mask where they read the input.

With dropout, LoRA's branch is `dropout(x) @ A.T @ B.T`. torch draws the mask in a kernel of its own, which reads x
and writes the dropped-out copy and a byte-wide mask, and the product then reads the copy again; the backward draws
the mask once more (train/lean_lora.py), multiplies the dropped copy into A's gradient, and applies the mask to x's
gradient in a third kernel. Per element of every adapted projection's input, about 34 bytes of memory traffic an
optimizer step, for products whose other side is only r wide: on an H100 the masks and their copies were 8% of a
7B QLoRA step (BENCHMARKS.md, "GPU training").

Here the mask is a function of (seed, row, column): a counter-based hash, so any kernel can draw any element's mask
where it loads the element, in any order and tiling, and nothing but the seed is kept. Three kernels:

    low = dropped_low(x, a, seed, p)          # dropout(x) @ a.T                      [M, r], forward
    grad_a = dropped_grad_a(grad_low, x, seed, p)  # grad_low.T @ dropout(x)         [r, K], fp32
    grad_x = dropped_grad_x(grad_low, a, seed, p)  # dropout's backward of grad_low @ a  [M, K]

The mask: element (m, k) of an [M, K] input is kept when the top 24 bits of `mix(m * K + k ^ mix(seed))` reach
`p * 2**24` (`mix`: a 32-bit integer hash with full avalanche, Chris Wellons' "lowbias32"; it is a bijection, so
no two elements of one call share a draw). Kept elements are scaled by `1 / (1 - p)`, as torch's dropout does. The
draws are not torch's (its Philox stream), so a run's masks differ from peft's: the same distribution, the same
maths in expectation, not the same bits. `keep_mask` draws the same mask with torch ops, for the tests.

CUDA only, or the CPU under Triton's interpreter (TRITON_INTERPRET=1, the tests).
"""

import triton
import triton.language as tl

SEED_BITS = 31
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # lowbias32's multipliers


def threshold(p: float) -> int:
    """The 24-bit draw at or above which an element is kept (dropout probability `p`)."""
    return round(p * (1 << 24))


def _mix_torch(x):
    """lowbias32 on an int64 tensor holding uint32 values (torch has no uint32 arithmetic on every device)."""
    mask = 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * _M1) & mask
    x = x ^ (x >> 15)
    x = (x * _M2) & mask
    return x ^ (x >> 16)


def keep_mask(seed: int, rows: int, cols: int, p: float, device="cpu"):
    """The kernels' mask for an [rows, cols] input as a bool tensor, drawn with torch ops (for tests and checks)."""
    import torch

    key = _mix_torch(torch.tensor(seed & 0xFFFFFFFF, dtype=torch.int64))
    index = torch.arange(rows * cols, dtype=torch.int64, device=device).reshape(rows, cols)
    return (_mix_torch(index ^ key.to(device)) >> 8) >= threshold(p)


@triton.jit
def _mix(x):
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x

@triton.jit
def _kept(key, rows, cols, width, limit):
    index = (rows[:, None] * width + cols[None, :]).to(tl.uint32)
    return (_mix(index ^ key) >> 8) >= limit


@triton.jit
def _dropped(x_ptr, rows, cols, inside, x_stride, key, k_size, limit, scale):
    """The [rows, cols] tile of x (zero outside `inside`), dropped out with the seed's mask and scaled, in x's dtype."""
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=inside, other=0.0)
    keep = _kept(key, rows, cols, k_size, limit)
    return tl.where(keep, x.to(tl.float32) * scale, 0.0).to(x.dtype)


# The row count (and each split's length) changes with every micro-batch's packed tokens: compiled once for any, not
# again whenever it happens to be a multiple of 16, mid-run.
@triton.jit(do_not_specialize=["seed", "m_size", "per_split"])
def _low_kernel(x_ptr, a_ptr, out_ptr, seed, m_size, k_size, r_size, x_stride, a_stride, per_split, limit, scale,
                BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    split = tl.program_id(1)
    ranks = tl.arange(0, BR)
    key = _mix(seed.to(tl.uint32))
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    first = split * per_split
    for start in range(first, first + per_split, BK):
        cols = start + tl.arange(0, BK)
        inside = (cols < k_size) & (cols < first + per_split)
        dropped = _dropped(x_ptr, rows, cols, (rows[:, None] < m_size) & inside[None, :], x_stride, key, k_size,
                           limit, scale)
        a = tl.load(a_ptr + ranks[None, :] * a_stride + cols[:, None], mask=(ranks[None, :] < r_size) & inside[:, None],
                    other=0.0)
        acc += tl.dot(dropped, a)
    tl.store(out_ptr + split * m_size * BR + rows[:, None] * BR + ranks[None, :], acc, mask=rows[:, None] < m_size)


@triton.jit(do_not_specialize=["seed", "m_size", "per_split"])
def _grad_a_kernel(grad_ptr, x_ptr, out_ptr, seed, m_size, k_size, r_size, grad_stride, x_stride, per_split,
                  limit, scale, BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    cols = tl.program_id(0) * BK + tl.arange(0, BK)
    split = tl.program_id(1)
    ranks = tl.arange(0, BR)
    key = _mix(seed.to(tl.uint32))
    acc = tl.zeros((BR, BK), dtype=tl.float32)
    first = split * per_split
    for start in range(first, first + per_split, BM):
        rows = start + tl.arange(0, BM)
        inside = (rows < m_size) & (rows < first + per_split)
        dropped = _dropped(x_ptr, rows, cols, inside[:, None] & (cols[None, :] < k_size), x_stride, key, k_size,
                           limit, scale)
        grad = tl.load(grad_ptr + rows[:, None] * grad_stride + ranks[None, :],
                       mask=inside[:, None] & (ranks[None, :] < r_size), other=0.0)
        acc += tl.dot(tl.trans(grad), dropped)
    tl.store(out_ptr + split * BR * k_size + ranks[:, None] * k_size + cols[None, :], acc,
             mask=(ranks[:, None] < BR) & (cols[None, :] < k_size))

@triton.jit(do_not_specialize=["seed", "m_size"])
def _grad_x_kernel(grad_ptr, a_ptr, out_ptr, seed, m_size, k_size, r_size, grad_stride, a_stride, out_stride,
                   limit, scale, BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, ADD: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    ranks = tl.arange(0, BR)
    key = _mix(seed.to(tl.uint32))
    grad = tl.load(grad_ptr + rows[:, None] * grad_stride + ranks[None, :],
                   mask=(rows[:, None] < m_size) & (ranks[None, :] < r_size), other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * a_stride + cols[None, :],
                mask=(ranks[:, None] < r_size) & (cols[None, :] < k_size), other=0.0)
    full = tl.dot(grad, a)
    keep = _kept(key, rows, cols, k_size, limit)
    where = out_ptr + rows[:, None] * out_stride + cols[None, :]
    inside = (rows[:, None] < m_size) & (cols[None, :] < k_size)
    value = tl.where(keep, full * scale, 0.0)
    if ADD:
        value += tl.load(where, mask=inside, other=0.0).to(tl.float32)
    tl.store(where, value.to(out_ptr.dtype.element_ty), mask=inside)


# Tiles and launch sizes: the fastest over a 7B layer's widths on an H100 (benchmarks/gpu_lora_kernels.py, whose
# table is in BENCHMARKS.md). `programs`: about how many programs a reduction is split into (its partial sums then
# added), so that every SM has several to switch between.
CONFIG = {
    "low": {"BM": 64, "BK": 64, "num_warps": 4, "programs": 2048},
    "grad_a": {"BM": 64, "BK": 64, "num_warps": 4, "programs": 2048},
    "grad_x": {"BM": 64, "BK": 128, "num_warps": 4},
}


def _rank_block(r: int) -> int:
    return max(16, 1 << (r - 1).bit_length())  # tl.dot needs at least 16 on each side


def _splits(length: int, block: int, others: int, programs: int) -> tuple[int, int]:
    """(splits, per split) of a `length`-long reduction in `block` steps, for about `programs` programs in all when
    `others` programs already run side by side; each split at least 4 blocks long."""
    splits = max(1, min(triton.cdiv(length, 4 * block), triton.cdiv(programs, others)))
    per_split = triton.cdiv(triton.cdiv(length, splits), block) * block
    return triton.cdiv(length, per_split), per_split


def _check(x2d) -> None:
    if x2d.shape[0] * x2d.shape[1] >= 1 << 31:
        raise ValueError("dropout kernels index elements in 32 bits: at most 2**31 elements an input")


def new_seed() -> int:
    """A seed for one call's mask, drawn from torch's CPU generator: a replay under the same random state (as
    checkpointing restores it) draws the same seed, and drawing it launches nothing on the GPU, where a seed kept on
    the device cost a launch per adapted projection and pass (the host was what held a 7B step back on an H100)."""
    import torch

    return int(torch.randint(0, 1 << SEED_BITS, (1,)))


def _summed_splits(kernel, config: dict, others: int, length: int, block: int, shape: tuple, device, arguments,
                   rank_block: int):
    """Launch a reduction `kernel` over (`others`, splits of `length`) programs into fp32 partial sums of `shape`,
    and add them up. `arguments(partial, per_split)`: the kernel's arguments before its tile sizes."""
    import torch

    splits, per_split = _splits(length, block, others, config["programs"])
    partial = torch.empty((splits, *shape), dtype=torch.float32, device=device)
    kernel[(others, splits)](*arguments(partial, per_split), BM=config["BM"], BK=config["BK"], BR=rank_block,
                             num_warps=config["num_warps"])
    return partial[0] if splits == 1 else partial.sum(0)


def dropped_low(x2d, a, seed, p: float):
    """`dropout(x2d, p) @ a.T` with the seed's mask; x2d [M, K] with unit column stride, a [r, K] in x's dtype."""
    _check(x2d)
    config = CONFIG["low"]
    m_size, k_size = x2d.shape
    r_size, rank_block = a.shape[0], _rank_block(a.shape[0])
    summed = _summed_splits(
        _low_kernel, config, triton.cdiv(m_size, config["BM"]), k_size, config["BK"], (m_size, rank_block),
        x2d.device, lambda partial, per_split: (x2d, a, partial, seed, m_size, k_size, r_size, x2d.stride(0),
                                                a.stride(0), per_split, threshold(p), 1 / (1 - p)), rank_block)
    return summed[:, :r_size].to(x2d.dtype)


def dropped_grad_a(grad_low, x2d, seed, p: float):
    """`grad_low.T @ dropout(x2d, p)` in fp32 with the seed's mask: A's gradient, [r, K]."""
    _check(x2d)
    config = CONFIG["grad_a"]
    m_size, k_size = x2d.shape
    r_size, rank_block = grad_low.shape[1], _rank_block(grad_low.shape[1])
    summed = _summed_splits(
        _grad_a_kernel, config, triton.cdiv(k_size, config["BK"]), m_size, config["BM"], (rank_block, k_size),
        x2d.device, lambda partial, per_split: (grad_low, x2d, partial, seed, m_size, k_size, r_size,
                                                grad_low.stride(0), x2d.stride(0), per_split, threshold(p),
                                                1 / (1 - p)), rank_block)
    return summed[:r_size]


def dropped_grad_x(grad_low, a, seed, p: float, dtype, into=None):
    """dropout's backward (the seed's mask, scaled) of `grad_low @ a`: x's gradient through the branch, [M, K]; with
    `into` ([M, K], unit column stride), added into it in place instead (one pass, no second [M, K] tensor)."""
    import torch

    config = CONFIG["grad_x"]
    m_size, r_size = grad_low.shape
    k_size = a.shape[1]
    out = torch.empty((m_size, k_size), dtype=dtype, device=grad_low.device) if into is None else into
    assert out.shape == (m_size, k_size) and out.stride(1) == 1
    _check(out)
    block_m, block_k = config["BM"], config["BK"]
    _grad_x_kernel[(triton.cdiv(m_size, block_m), triton.cdiv(k_size, block_k))](
        grad_low, a, out, seed, m_size, k_size, r_size, grad_low.stride(0), a.stride(0), out.stride(0),
        threshold(p), 1 / (1 - p), BM=block_m, BK=block_k, BR=_rank_block(r_size), num_warps=config["num_warps"],
        ADD=into is not None)
    return out
