"""LoRA's dropout drawn inside its r-wide products (train/lora_kernels.py): the kernels compute the products of the
mask that `keep_mask` draws with torch ops, the mask is dropout's (its rate, independent of position and call), and
the lean branch with the kernels takes the gradients of its own forward, under checkpointing too.

The kernels run under Triton's interpreter here (numpy on the CPU; its bf16 is not the GPU's, so fp32 and fp16),
compiled in bf16 on a GPU in tests/test_gpu.py.
"""

import pytest

from tests.decode.test_tritondecode import _interpreted

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def kernels():
    yield from _interpreted("talkalike.train.lora_kernels")


def _dropped(x, keep, p):
    return torch.where(keep, x.float() / (1 - p), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rows", "width", "rank"), [(70, 100, 4), (300, 40, 5), (33, 1100, 3)])
def test_the_kernels_multiply_by_the_mask_keep_mask_draws(kernels, dtype, rows, width, rank):
    p, seed = 0.3, 123_457
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, width, generator=generator).to(dtype)
    a = (torch.randn(rank, width, generator=generator) * 0.1).to(dtype)
    grad_low = torch.randn(rows, rank, generator=generator).to(dtype)
    keep = kernels.keep_mask(seed, rows, width, p)
    dropped = _dropped(x, keep, p).to(dtype).float()
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-3, "atol": 2e-3}

    low = kernels.dropped_low(x, a, seed, p)
    assert low.dtype == dtype and low.shape == (rows, rank)
    torch.testing.assert_close(low.float(), dropped @ a.float().t(), **tolerance)
    grad_a = kernels.dropped_grad_a(grad_low, x, seed, p)
    assert grad_a.dtype == torch.float32 and grad_a.shape == (rank, width)
    torch.testing.assert_close(grad_a, grad_low.float().t() @ dropped, **tolerance)
    grad_x = kernels.dropped_grad_x(grad_low, a, seed, p, dtype)
    assert grad_x.dtype == dtype and grad_x.shape == (rows, width)
    torch.testing.assert_close(grad_x.float(), _dropped(grad_low.float() @ a.float(), keep, p), **tolerance)
    # another seed, another mask: the comparison above can fail
    other = kernels.dropped_low(x, a, seed + 1, p)
    assert (other.float() - low.float()).abs().max() > 0.1


def test_the_mask_drops_at_dropout_s_rate_whatever_the_position_or_call(kernels):
    p, rows, width = 0.07, 512, 1024
    masks = [~kernels.keep_mask(seed, rows, width, p) for seed in (1, 2, 3)]
    n = rows * width
    for dropped in masks:  # the rate, and no row or column dropped more than chance allows
        assert abs(dropped.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
        for axis, length in ((0, rows), (1, width)):
            spread = dropped.float().mean(axis).std().item()
            assert spread < 1.3 * (p * (1 - p) / length) ** 0.5
    # calls with neighbouring seeds draw independent masks: both dropped about p * p of the time
    both = (masks[0] & masks[1]).float().mean().item()
    assert abs(both - p * p) < 4 * (p * p / n) ** 0.5
    # neighbouring elements too (the hash of consecutive counters)
    both = (masks[0][:, 1:] & masks[0][:, :-1]).float().mean().item()
    assert abs(both - p * p) < 4 * (p * p / n) ** 0.5
    assert kernels.keep_mask(5, 4, 4, 0.0).all() and not kernels.keep_mask(5, 4, 4, 1.0).any()


def _branch_reference(kernels, result, x, a, b, scaling, p, seed, dtype):
    """lora_add's sum with autograd through torch ops and the kernels' mask for `seed`."""
    keep = kernels.keep_mask(seed, x.shape[0] * x.shape[1], x.shape[2], p, x.device).reshape(x.shape)
    dropped = _dropped(x, keep, p).to(dtype)
    return result + scaling * ((dropped @ a.to(dtype).t()) @ b.to(dtype).t())


def check_branch(kernels, device, dtype, checkpointed: bool, shape=(2, 40, 24, 12, 4), tolerance: float = 0.01):
    """lora_add and lora_branch with the kernels (`kernels`: the module, compiled or interpreted) against autograd
    through torch ops with the same mask: loss and the gradients of x, the base output, A and B. tests/test_gpu.py
    runs it compiled in bf16."""
    from torch.utils.checkpoint import checkpoint

    from talkalike.train.lean_lora import lora_add, lora_branch

    rows, length, width, out, rank = shape
    p, scaling = 0.3, 2.0
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, length, width, generator=generator).to(device, dtype).requires_grad_()
    result = torch.randn(rows, length, out, generator=generator).to(device, dtype).requires_grad_()
    a = (torch.randn(rank, width, generator=generator) * 0.3).to(device).requires_grad_()  # fp32, as peft keeps them
    b = (torch.randn(out, rank, generator=generator) * 0.3).to(device).requires_grad_()
    weight = torch.randn(rows, length, out, generator=generator).to(device, dtype)

    def loss_of(function):
        for tensor in (x, result, a, b):
            tensor.grad = None
        torch.manual_seed(11)
        loss = (function().float() * weight.float()).sum()
        loss.backward()
        return loss.detach(), [t.grad.clone() for t in (x, result, a, b)]

    def fused(inputs=x):
        return lora_add(result, inputs, a, b, scaling, p, dtype, kernels=True)

    def run():  # (checkpoint restores the random state of the devices its tensor arguments are on)
        return checkpoint(fused, x, use_reentrant=False) if checkpointed else fused()

    loss, grads = loss_of(run)
    torch.manual_seed(11)
    seed = kernels.new_seed()  # the seed the call drew
    reference_loss, reference = loss_of(lambda: _branch_reference(kernels, result, x, a, b, scaling, p, seed, dtype))
    torch.testing.assert_close(loss, reference_loss, rtol=tolerance, atol=tolerance * reference_loss.abs().item())
    for grad, expected, name in zip(grads, reference, ("x", "result", "a", "b"), strict=True):
        assert (grad.float() - expected.float()).abs().max() <= tolerance * expected.float().abs().max(), name
    # lora_branch is the same branch without the add
    with torch.no_grad():
        torch.manual_seed(11)
        alone = lora_branch(x, a, b, scaling, p, dtype, kernels=True)
        torch.manual_seed(11)
        together = fused()
    torch.testing.assert_close((alone + result).float(), together.float(), rtol=tolerance, atol=tolerance)
    # a dropout of 0 takes torch's own path: no seed is drawn
    generator_state = torch.cuda.get_rng_state(device) if x.is_cuda else torch.get_rng_state()
    lora_add(result, x, a, b, scaling, 0.0, dtype, kernels=True)
    after = torch.cuda.get_rng_state(device) if x.is_cuda else torch.get_rng_state()
    assert torch.equal(after, generator_state)


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
def test_the_lean_branch_with_the_kernels_takes_its_own_forward_s_gradients(kernels, checkpointed):
    check_branch(kernels, "cpu", torch.float16, checkpointed)


def test_the_branch_s_x_gradient_adds_into_the_base_s_in_place(kernels):
    """dropped_grad_x with `into`: the base's gradient plus the branch's, written where the base's was."""
    p, seed, rows, width, rank = 0.3, 99, 70, 100, 4
    generator = torch.Generator().manual_seed(1)
    grad_low = torch.randn(rows, rank, generator=generator).half()
    a = torch.randn(rank, width, generator=generator).half()
    base = torch.randn(rows, width, generator=generator).half()
    into = base.clone()
    out = kernels.dropped_grad_x(grad_low, a, seed, p, torch.float16, into=into)
    assert out.data_ptr() == into.data_ptr()
    keep = kernels.keep_mask(seed, rows, width, p)
    expected = base.float() + _dropped(grad_low.float() @ a.float(), keep, p)
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-3)


def test_base_and_branch_with_the_kernels_take_the_masks_gradients(kernels):
    """BaseAndBranch with the dropout kernels: the base layer plus lora_add's kernel path, x's gradient one tensor."""
    from talkalike.train.lean_lora import _base_and_branch, lora_add

    dtype, p = torch.float16, 0.3
    generator = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(24, 12, bias=False).half().requires_grad_(False)
    x = torch.randn(2, 40, 24, generator=generator).half().requires_grad_()
    a = (torch.randn(4, 24, generator=generator) * 0.3).requires_grad_()
    b = (torch.randn(12, 4, generator=generator) * 0.3).requires_grad_()
    weight = torch.randn(2, 40, 12, generator=generator).half()

    def run(function):
        for tensor in (x, a, b):
            tensor.grad = None
        torch.manual_seed(5)
        out = function()
        (out.float() * weight.float()).sum().backward()
        return out.detach().float(), [t.grad.float().clone() for t in (x, a, b)]

    expected, reference = run(lambda: lora_add(layer(x), x, a, b, 2.0, p, dtype, kernels=True))
    out, grads = run(lambda: _base_and_branch().apply(x, layer, a, b, 2.0, p, dtype, dtype, True, False, False))
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)
    for grad, want, name in zip(grads, reference, "xab", strict=True):
        assert (grad - want).abs().max() <= 0.01 * want.abs().max(), name
