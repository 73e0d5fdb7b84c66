"""LoRA's branch, `dropout(x) @ A.T @ B.T * scaling`, as one autograd function that keeps no copy of its input.

peft computes the branch with three modules (dropout, lora_A, lora_B). For its backward autograd then keeps, for each
adapted projection, the dropped-out input (lora_A's weight gradient needs it) and the dropout mask: per token of a
Mistral-7B layer, four 4,096-wide copies on the attention side (q, k, v and o each drop out on their own), two on the
MLP's gate and up, one 14,336-wide for down, and a byte-wide mask for each, in the working set of the layer being
recomputed. Measured on an H200 (BENCHMARKS.md, "GPU training"): 5% faster at the default 4 rows a micro-batch, and
0.06-0.12 GB less at the peak (most of a recomputed layer's working set is its MLP's, not these copies).

`LoraBranch` keeps a reference to the input itself (q, k and v share one; autograd holds most inputs anyway), the
r-wide product `dropout(x) @ A.T`, and the random state the dropout drew from; the backward draws the very same mask
again. The maths is the same as peft's to the bit: the same dropout call on the same random state, the same products
in the same dtypes (tests/train/test_lean_lora.py compares outputs and gradients). peft also clones a 4-bit base
layer's output before adding to it; the out-of-place add here needs no clone.

`LoraAdd` (`fused_add=True`, the trainer's speed-up "lora-add") also folds the sum into the branch's last product:
`addmm(base_output, low, B.T, alpha=scaling)`, which cuBLAS computes with the base output as its accumulator, where
peft writes the output-wide product, then its scaled copy, then the sum (and its backward scales the output-wide
gradient). The sum is rounded once instead of three times, so its bits are not peft's: tests/train/test_lean_lora.py
checks that its bf16 gradients are as close to the fp32 ones as peft's own.

    use_lean_lora(peft_model)   # every vanilla LoRA Linear (plain or bitsandbytes 4-bit) of the model, per instance
    use_lean_lora(peft_model, fused_add=True)
"""

import types
from functools import cache


def _dropout(x, p: float):
    """(dropped-out x, a function taking a gradient back through the same mask) as `torch.nn.functional.dropout`
    would drop it out in training: the fused kernel on a GPU, a Bernoulli mask in x's dtype elsewhere (ATen's
    choice), so the same random state gives the same values."""
    import torch

    if x.is_cuda:
        out, mask = torch.native_dropout(x, p, True)
        return out, lambda grad: torch.ops.aten.native_dropout_backward(grad, mask, 1 / (1 - p))
    noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
    return x * noise, lambda grad: grad * noise


def _random_state(device):
    import torch

    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_random_state(device, state) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _forward_low(ctx, x, a, b, scaling: float, p: float, dtype, early):
    """`dropout(x) @ a.T` in `dtype`, with what the backward needs kept on `ctx` (the random state, not the mask)."""
    state = _random_state(x.device) if p > 0 else None  # (forward runs with grad off)
    dropped = x.to(early)
    if p > 0:
        dropped = _dropout(dropped, p)[0]
    low = dropped.to(dtype) @ a.to(dtype).t()
    ctx.save_for_backward(x, a, b, low)
    ctx.state, ctx.scaling, ctx.p, ctx.dtype, ctx.early = state, scaling, p, dtype, early
    return low


def _branch_grads(ctx, grad, scale_after: bool, needs_x: bool):
    """The gradients of x (None unless `needs_x`), A and B from the gradient of the branch's output. `scale_after`:
    the scaling multiplies the two r-wide products instead of the output-wide gradient (the fused add's rounding; one
    pass less)."""
    x, a, b, low = ctx.saved_tensors
    dtype = ctx.dtype
    grad = grad.to(dtype).reshape(-1, grad.shape[-1])
    if not scale_after:
        grad = grad * ctx.scaling  # through `* scaling`, as autograd does
    grad_b = grad.t() @ low.reshape(-1, low.shape[-1])
    grad_low = grad @ b.to(dtype)
    if scale_after:
        grad_b, grad_low = grad_b.mul_(ctx.scaling), grad_low.mul_(ctx.scaling)
    dropped = x.reshape(-1, x.shape[-1]).to(ctx.early)
    if ctx.p > 0:  # the forward's mask, drawn again from the random state it was drawn from
        outer = _random_state(x.device)
        _set_random_state(x.device, ctx.state)
        try:
            dropped, through_mask = _dropout(dropped, ctx.p)
        finally:
            _set_random_state(x.device, outer)
    grad_a = grad_low.t() @ dropped.to(dtype)
    grad_x = None
    if needs_x:
        grad_x = (grad_low @ a.to(dtype)).to(ctx.early)
        if ctx.p > 0:
            grad_x = through_mask(grad_x)
        grad_x = grad_x.reshape(x.shape).to(x.dtype)
    return grad_x, grad_a.to(a.dtype), grad_b.to(b.dtype)


@cache
def _branch_functions():
    import torch

    class LoraBranch(torch.autograd.Function):
        """The branch alone, as peft computes it: `(dropout(x) @ A.T @ B.T) * scaling`."""

        @staticmethod
        def forward(ctx, x, a, b, scaling: float, p: float, dtype, early):
            low = _forward_low(ctx, x, a, b, scaling, p, dtype, early)
            return (low @ b.to(dtype).t()) * scaling

        @staticmethod
        def backward(ctx, grad):
            return *_branch_grads(ctx, grad, False, ctx.needs_input_grad[0]), None, None, None, None

    class LoraAdd(torch.autograd.Function):
        """`result + scaling * (dropout(x) @ A.T @ B.T)` as one matrix product that adds into the base layer's
        output (cuBLAS's beta = 1): no output-wide product, scaling and sum in three more passes over memory, and
        none for the scaling in the backward. One rounding of the sum instead of three: not peft's bits."""

        @staticmethod
        def forward(ctx, result, x, a, b, scaling: float, p: float, dtype, early):
            low = _forward_low(ctx, x, a, b, scaling, p, dtype, early)
            out = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]),
                              b.to(dtype).t(), alpha=scaling)
            return out.reshape(result.shape)

        @staticmethod
        def backward(ctx, grad):
            return grad, *_branch_grads(ctx, grad, True, ctx.needs_input_grad[1]), None, None, None, None

    return LoraBranch, LoraAdd


def lora_branch(x, a, b, scaling: float, p: float, dtype, early=None):
    """`dropout(x.to(early), p).to(dtype) @ a.T @ b.T * scaling` (the products in `dtype`; `early`: the dtype x is
    dropped out in, default x's own), keeping no copy of x for the backward."""
    return _branch_functions()[0].apply(x, a, b, scaling, p, dtype, x.dtype if early is None else early)


def lora_add(result, x, a, b, scaling: float, p: float, dtype, early=None):
    """`result + lora_branch(x, a, b, scaling, p, dtype, early)` in one matrix product that adds into `result`
    (which must be in `dtype`)."""
    return _branch_functions()[1].apply(result, x, a, b, scaling, p, dtype, x.dtype if early is None else early)


def _lean_forward(self, x, *args, **kwargs):
    """A vanilla LoRA Linear's forward (peft's, adapters on, not merged) with the branch as `lora_branch`, or added
    inside its last product (`lora_add`) where the layer was given the fused add."""
    import torch

    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or any(name in self.lora_variant for name in self.active_adapters)):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    out_dtype = result.dtype
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        dropout = self.lora_dropout[name]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        # autocast's dtype where it is on (it would cast both sides of each product to it), else the adapter's
        on = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if on else a.dtype
        # peft casts x to the adapter's dtype before the dropout, unless told not to (train/trainer.py: lora-input-cast)
        # and, on a 4-bit layer, under autocast
        cast = getattr(self, "cast_input_dtype_enabled", True) and not (on and self.lean_four_bit)
        early = a.dtype if cast else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            if self.lean_fused_add and result.dtype == dtype:
                result = lora_add(result, x, a, b, self.scaling[name], p, dtype, early)
            else:
                result = result + lora_branch(x, a, b, self.scaling[name], p, dtype, early)
    return result.to(out_dtype)


def use_lean_lora(model, fused_add: bool = False) -> int:
    """Give every vanilla LoRA Linear of `model` (no bias on B, no DoRA or other variant) the lean branch, per
    instance; returns how many. Layers that peft builds otherwise keep their own forward. `fused_add`: the branch
    adds into the base layer's output inside its last matrix product (`lora_add`) where the two share a dtype."""
    from peft.tuners.lora import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit
        kinds: tuple = (Linear, Linear4bit)
    except ImportError:  # no bitsandbytes
        kinds = (Linear,)
    count = 0
    for module in model.modules():
        if type(module) not in kinds or module.lora_variant:
            continue
        if any(b.bias is not None for b in module.lora_B.values()):
            continue
        module.lean_four_bit = type(module) is not Linear  # (read at every forward: decided once here)
        module.lean_fused_add = fused_add
        module.forward = types.MethodType(_lean_forward, module)
        count += 1
    return count
