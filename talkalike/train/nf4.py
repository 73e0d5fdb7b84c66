"""A 4-bit NF4 weight de-quantized in one Triton kernel, scales and all.

QLoRA's frozen weights are bitsandbytes' NF4 with double quantization: each block of 64 weights has a scale, stored
as a byte through a second, 8-bit blockwise code (one fp32 scale per 256 bytes, plus an offset). bitsandbytes
de-quantizes a weight in three launches from a few Python layers: the scales' 8-bit code, the offset added, then the
4-bit code. A 7B step de-quantizes every weight three times (forward, the checkpoint's replay, backward): 640 weights,
1,920 launches, and on an H100 a host that launched them more slowly than the GPU ran them (BENCHMARKS.md, "GPU
training"). Here each weight is one launch: each output element reads its byte, its block's scale byte, the scale's
own scale and the offset, and writes `code[nibble] * (code2[scale byte] * scale2 + offset)`.

The same arithmetic as bitsandbytes' kernels, in fp32 and in the same order (no fused multiply-add), rounded once
to the output dtype: the same bits (tests/test_gpu.py compares them with bitsandbytes' own).

CUDA only, or the CPU under Triton's interpreter (TRITON_INTERPRET=1, the tests).
"""

from functools import cache

import triton
import triton.language as tl

# bitsandbytes' NF4 code: the 16 values a 4-bit index stands for
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
BLOCK = 1024


@triton.jit
def _nf4_kernel(packed, code, scales, code2, scales2, offset, out, n, BLOCKSIZE: tl.constexpr,
                BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = index < n
    byte = tl.load(packed + index // 2, mask=inside, other=0).to(tl.int32)
    nibble = tl.where(index % 2 == 0, byte >> 4, byte & 15)  # the first of two values is the high nibble
    value = tl.load(code + nibble, mask=inside, other=0.0)
    block = index // BLOCKSIZE
    if NESTED:
        quantized = tl.load(scales + block, mask=inside, other=0).to(tl.int32)
        scale = tl.load(code2 + quantized, mask=inside, other=0.0) * tl.load(scales2 + block // BLOCKSIZE2,
                                                                             mask=inside, other=0.0)
        scale = scale + tl.load(offset)
    else:
        scale = tl.load(scales + block, mask=inside, other=0.0)
    tl.store(out + index, (value * scale).to(out.dtype.element_ty), mask=inside)


@cache
def _code(device):
    import torch

    return torch.tensor(NF4, dtype=torch.float32, device=device)


def handles(quant_state) -> bool:
    """Whether `dequantize` serves this bitsandbytes QuantState: NF4, fp32 scales (nested or not)."""
    import torch

    if getattr(quant_state, "quant_type", None) != "nf4":
        return False
    if quant_state.nested:
        return quant_state.absmax.dtype == torch.uint8 and quant_state.state2.absmax.dtype == torch.float32
    return quant_state.absmax.dtype == torch.float32


def dequantize(packed, quant_state, dtype):
    """The weight that `packed` (bitsandbytes' packed bytes) and its NF4 `quant_state` stand for, in `dtype`, shaped
    as the state says; one launch."""
    import torch

    out = torch.empty(quant_state.shape, dtype=dtype, device=packed.device)
    n = out.numel()
    nested = bool(quant_state.nested)
    if nested:
        second = quant_state.state2
        scales, code2, scales2, offset = quant_state.absmax, second.code, second.absmax, quant_state.offset
        blocksize2 = second.blocksize
        offset = offset if torch.is_tensor(offset) else torch.tensor(float(offset), device=packed.device)
        offset = offset.reshape(1).to(torch.float32)
    else:
        scales = quant_state.absmax
        code2 = scales2 = offset = scales  # unread
        blocksize2 = 1
    _nf4_kernel[(triton.cdiv(n, BLOCK),)](
        packed.reshape(-1).view(torch.uint8), _code(packed.device), scales, code2, scales2, offset, out, n,
        BLOCKSIZE=quant_state.blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, BLOCK=BLOCK, num_warps=4,
        enable_fp_fusion=False)
    return out
