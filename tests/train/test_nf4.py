"""The one-launch NF4 de-quantization (train/nf4.py) under Triton's interpreter: every weight element is the code's
value for its nibble (high nibble first) times its block's scale, and with double quantization that scale is the
8-bit code's value times the scale's own scale plus the offset; the same arithmetic, bit for bit, as a plain torch
rendering of bitsandbytes' (tests/test_gpu.py compares with bitsandbytes itself on a GPU)."""

from types import SimpleNamespace

import pytest

from tests.decode.test_tritondecode import _interpreted

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def nf4():
    yield from _interpreted("talkalike.train.nf4")


def _state(shape, nested: bool, seed: int = 0):
    """Packed bytes and a bitsandbytes-like QuantState with random scales (64-element blocks, 256 per scale)."""
    generator = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    packed = torch.randint(0, 256, ((n + 1) // 2, 1), dtype=torch.uint8, generator=generator)
    blocks = -(-n // 64)
    if nested:
        second = SimpleNamespace(absmax=torch.rand(-(-blocks // 256), generator=generator) + 0.5,
                                 code=torch.sort(torch.rand(256, generator=generator) * 2 - 1).values, blocksize=256)
        state = SimpleNamespace(absmax=torch.randint(0, 256, (blocks,), dtype=torch.uint8, generator=generator),
                                state2=second, offset=torch.tensor(0.031), nested=True)
    else:
        state = SimpleNamespace(absmax=torch.rand(blocks, generator=generator) + 0.1, nested=False)
    state.quant_type, state.blocksize, state.shape = "nf4", 64, torch.Size(shape)
    return packed, state


def _reference(nf4, packed, state, dtype):
    """bitsandbytes' steps as torch ops: the scales' code, the offset added, then the 4-bit code."""
    scales = state.absmax
    if state.nested:
        scales = state.state2.code[state.absmax.long()] * state.state2.absmax.repeat_interleave(256)[: len(scales)]
        scales = scales + state.offset
    flat = packed.reshape(-1)
    nibbles = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1).long()
    n = state.shape[0] * state.shape[1]
    values = torch.tensor(nf4.NF4)[nibbles][:n] * scales.repeat_interleave(64)[:n]
    return values.to(dtype).reshape(state.shape)


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "fp32-scales"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_launch_gives_the_weight_bitsandbytes_steps_give(nf4, nested, dtype):
    for shape in [(96, 64), (40, 3 * 1024 + 7)]:  # the second: blocks and launch tiles that end mid-row
        packed, state = _state(shape, nested)
        assert nf4.handles(state)
        out = nf4.dequantize(packed, state, dtype)
        assert out.shape == shape and out.dtype == dtype
        reference = _reference(nf4, packed, state, dtype)
        assert torch.equal(out, reference)
        # the check can fail: the low nibble first gives another weight
        swapped = ((packed & 15) << 4) | (packed >> 4)
        assert not torch.equal(nf4.dequantize(swapped, state, dtype), reference)


def test_other_codes_are_left_to_bitsandbytes(nf4):
    _, state = _state((64, 64), True)
    state.quant_type = "fp4"
    assert not nf4.handles(state)
