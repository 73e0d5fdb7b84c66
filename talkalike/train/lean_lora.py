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

More, each a speed-up of train/trainer.py: `kernels=True` draws dropout's mask inside the branch's r-wide
products (train/lora_kernels.py); `base=True` makes a 4-bit base layer and its branch one function (`BaseAndBranch`),
whose x gradient is the base's `grad @ W` with the branch's part added in place, and which adds the branch into the
base output in place; `nf4=True` has that function de-quantize its NF4 weight in one launch (train/nf4.py);
`scaled=True` has its backward take the scaling inside an r-wide product; `skip_unread_outputs` lets a
checkpointed layer's replay skip its MLP's last base product.

    use_lean_lora(peft_model)   # every vanilla LoRA Linear (plain or bitsandbytes 4-bit) of the model, per instance
    use_lean_lora(peft_model, fused_add=True, kernels=True, base=True, nf4=True)   # the GPU recipe's
"""

import os
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


def _in_kernels(x, p: float, dtype, early, kernels: bool) -> bool:
    """Whether the dropout kernels (train/lora_kernels.py) draw this branch's mask: asked for, a mask to draw, and
    x dropped out and multiplied in its own half-precision dtype on a GPU (or under Triton's interpreter)."""
    import torch

    return (kernels and p > 0 and x.dtype == early == dtype and dtype in (torch.bfloat16, torch.float16)
            and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"))


def _rows(x):
    """x as [rows, features] with unit column stride (a view where it can be)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _forward_low(ctx, x, a, b, scaling: float, p: float, dtype, early, kernels: bool = False):
    """(`dropout(x) @ a.T`, b) in `dtype`, with what the backward needs kept on `ctx` (the random state, or the
    kernels' seed, not the mask; A and B as the products read them, cast once for both passes)."""
    ctx.seed = None
    a_cast, b_cast = a.to(dtype), b.to(dtype)
    if _in_kernels(x, p, dtype, early, kernels):
        from talkalike.train.lora_kernels import dropped_low, new_seed

        ctx.seed, state = new_seed(), None
        low = dropped_low(_rows(x), a_cast, ctx.seed, p).reshape(*x.shape[:-1], a.shape[0])
    else:
        state = _random_state(x.device) if p > 0 else None  # (forward runs with grad off)
        dropped = x.to(early)
        if p > 0:
            dropped = _dropout(dropped, p)[0]
        low = dropped.to(dtype) @ a_cast.t()
    ctx.save_for_backward(x, a_cast, b_cast, low)
    ctx.state, ctx.scaling, ctx.p, ctx.dtype, ctx.early = state, scaling, p, dtype, early
    ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
    return low, b_cast


def _add_branch(ctx, result, x, a, b, scaling: float, p: float, dtype, early, kernels: bool, in_place: bool = False):
    """`result + scaling * low @ b.T` in one matrix product (cuBLAS's beta = 1), `low` = `_forward_low`'s. `in_place`:
    into `result` itself (a tensor nothing else holds), where out-of-place addmm first copies it whole."""
    import torch

    low, b_cast = _forward_low(ctx, x, a, b, scaling, p, dtype, early, kernels)
    rows, low = result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1])
    if in_place and rows.data_ptr() == result.data_ptr():
        rows.addmm_(low, b_cast.t(), alpha=scaling)
        return result
    return torch.addmm(rows, low, b_cast.t(), alpha=scaling).reshape(result.shape)


@cache
def _zero(device, dtype):
    """A zero scalar for addmm's ignored input (beta 0)."""
    import torch

    return torch.zeros((), dtype=dtype, device=device)


def _branch_grads(ctx, grad, scale_after: bool, needs_x: bool, into=None):
    """The gradients of x (None unless `needs_x`), A and B from the gradient of the branch's output. `scale_after`:
    the scaling multiplies the two r-wide products instead of the output-wide gradient (the fused add's rounding; one
    pass less). `into`: x's gradient through the base layer ([rows, features] in x's dtype), which the branch's adds
    to in place and returns as x's."""
    import torch

    x, a, b, low = ctx.saved_tensors  # A and B in `dtype`
    dtype = ctx.dtype
    grad = grad.to(dtype).reshape(-1, grad.shape[-1])
    if not scale_after:
        grad = grad * ctx.scaling  # through `* scaling`, as autograd does
    low = low.reshape(-1, low.shape[-1])
    if scale_after and getattr(ctx, "scaled_products", False) and grad.is_cuda:
        # The scaling inside x's side's product (cuBLAS's alpha), and B's gradient written in fp32 by its product
        # (mm's out_dtype, CUDA only): three launches where there were five; B's gradient rounded once, not twice.
        grad_low = torch.addmm(_zero(grad.device, dtype), grad, b, beta=0, alpha=ctx.scaling)
        if ctx.b_dtype == torch.float32 and dtype in (torch.bfloat16, torch.float16):
            grad_b = torch.mm(grad.t(), low, out_dtype=torch.float32).mul_(ctx.scaling)
        else:
            grad_b = (grad.t() @ low).mul_(ctx.scaling)
    else:
        grad_b = grad.t() @ low
        grad_low = grad @ b
        if scale_after:
            grad_b, grad_low = grad_b.mul_(ctx.scaling), grad_low.mul_(ctx.scaling)
    if ctx.seed is not None:  # the kernels draw the forward's mask again from its seed, inside the products
        from talkalike.train.lora_kernels import dropped_grad_a, dropped_grad_x

        grad_a = dropped_grad_a(grad_low, _rows(x), ctx.seed, ctx.p)
        grad_x = None
        if needs_x:
            grad_x = dropped_grad_x(grad_low, a, ctx.seed, ctx.p, ctx.early, into=into)
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        return grad_x, grad_a.to(ctx.a_dtype), grad_b.to(ctx.b_dtype)
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
        grad_x = (grad_low @ a).to(ctx.early)
        if ctx.p > 0:
            grad_x = through_mask(grad_x)
        if into is not None:
            grad_x = into.add_(grad_x)
        grad_x = grad_x.reshape(x.shape).to(x.dtype)
    return grad_x, grad_a.to(ctx.a_dtype), grad_b.to(ctx.b_dtype)


@cache
def _branch_functions():
    import torch

    class LoraBranch(torch.autograd.Function):
        """The branch alone, as peft computes it: `(dropout(x) @ A.T @ B.T) * scaling`."""

        @staticmethod
        def forward(ctx, x, a, b, scaling: float, p: float, dtype, early, kernels: bool):
            low, b_cast = _forward_low(ctx, x, a, b, scaling, p, dtype, early, kernels)
            return (low @ b_cast.t()) * scaling

        @staticmethod
        def backward(ctx, grad):
            return *_branch_grads(ctx, grad, False, ctx.needs_input_grad[0]), None, None, None, None, None

    class LoraAdd(torch.autograd.Function):
        """`result + scaling * (dropout(x) @ A.T @ B.T)` as one matrix product that adds into the base layer's
        output (cuBLAS's beta = 1): no output-wide product, scaling and sum in three more passes over memory, and
        none for the scaling in the backward. One rounding of the sum instead of three: not peft's bits."""

        @staticmethod
        def forward(ctx, result, x, a, b, scaling: float, p: float, dtype, early, kernels: bool):
            return _add_branch(ctx, result, x, a, b, scaling, p, dtype, early, kernels)

        @staticmethod
        def backward(ctx, grad):
            return grad, *_branch_grads(ctx, grad, True, ctx.needs_input_grad[1]), None, None, None, None, None

    return LoraBranch, LoraAdd


def lora_branch(x, a, b, scaling: float, p: float, dtype, early=None, kernels: bool = False):
    """`dropout(x.to(early), p).to(dtype) @ a.T @ b.T * scaling` (the products in `dtype`; `early`: the dtype x is
    dropped out in, default x's own), keeping no copy of x for the backward. `kernels`: the mask drawn inside the
    r-wide products (train/lora_kernels.py) where they can (half precision on a GPU), not torch's dropout."""
    early = x.dtype if early is None else early
    return _branch_functions()[0].apply(x, a, b, scaling, p, dtype, early, kernels)


def lora_add(result, x, a, b, scaling: float, p: float, dtype, early=None, kernels: bool = False):
    """`result + lora_branch(x, a, b, scaling, p, dtype, early, kernels)` in one matrix product that adds into
    `result` (which must be in `dtype`)."""
    early = x.dtype if early is None else early
    return _branch_functions()[1].apply(result, x, a, b, scaling, p, dtype, early, kernels)


def base_weight(layer, dtype, one_launch: bool = False):
    """A frozen base layer's weight [out, in] in `dtype`: a bitsandbytes 4-bit layer's de-quantized as its own
    backward de-quantizes it (`MatMul4Bit.backward`), a plain linear layer's as it is. `one_launch`: an NF4 weight on
    a GPU de-quantized by train/nf4.py's kernel (the same bits in one launch)."""
    weight = layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return weight.to(dtype)
    if one_launch and (weight.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        from talkalike.train import nf4

        if nf4.handles(quant_state):
            return nf4.dequantize(weight.data, quant_state, dtype)
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data.view(-1, 1), quant_state).to(dtype)


@cache
def _base_and_branch():
    import torch

    class BaseAndBranch(torch.autograd.Function):
        """A frozen base layer and its LoRA branch as one function: `base(x) + scaling * dropout(x) @ A.T @ B.T`,
        the branch added inside its last product (as `LoraAdd`). x's gradient through both is one tensor: the base's
        `grad @ W`, into which the branch's part is added in place, where autograd would add two [rows, in] tensors
        into a third. `skip`: the base's product is not computed (a replayed layer's output nothing reads, as
        `WeightOnly`)."""

        @staticmethod
        def forward(ctx, x, layer, a, b, scaling: float, p: float, dtype, early, kernels: bool, skip: bool,
                    one_launch: bool, scaled_products: bool = False):
            if skip:
                result = x.new_empty((*x.shape[:-1], layer.out_features))
            elif one_launch:  # bitsandbytes' own forward, de-quantizing in one launch
                result = torch.nn.functional.linear(x, base_weight(layer, dtype, one_launch=True))
            else:
                result = layer(x)
            ctx.layer, ctx.one_launch, ctx.scaled_products = layer, one_launch, scaled_products
            return _add_branch(ctx, result, x, a, b, scaling, p, dtype, early, kernels, in_place=True)

        @staticmethod
        def backward(ctx, grad):
            into = None
            if ctx.needs_input_grad[0]:
                rows = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
                into = rows @ base_weight(ctx.layer, ctx.dtype, ctx.one_launch)
            grad_x, grad_a, grad_b = _branch_grads(ctx, grad, True, ctx.needs_input_grad[0], into=into)
            return grad_x, None, grad_a, grad_b, None, None, None, None, None, None, None, None

    return BaseAndBranch


@cache
def _weight_only():
    import torch

    class WeightOnly(torch.autograd.Function):
        """A 4-bit layer whose output nothing reads: no product forward (its memory is left as it is), and the
        backward's `grad @ W` as bitsandbytes' own (`MatMul4Bit.backward`)."""

        @staticmethod
        def forward(ctx, x, layer, one_launch: bool = False):
            ctx.layer, ctx.one_launch = layer, one_launch
            return x.new_empty((*x.shape[:-1], layer.out_features))

        @staticmethod
        def backward(ctx, grad):
            return grad @ base_weight(ctx.layer, grad.dtype, ctx.one_launch), None, None

    return WeightOnly


def _one_adapter(self, x, args, kwargs):
    """(a, b, scaling, p, dtype, early) for `BaseAndBranch` where it serves this call: the fused add on a 4-bit base
    without a bias, one active adapter, under autocast in the base's compute dtype, x already in it; else None."""
    import torch

    base = self.base_layer
    if (args or kwargs or not (self.lean_base and self.lean_fused_add and self.lean_four_bit) or base.bias is not None
            or len(self.active_adapters) != 1 or self.active_adapters[0] not in self.lora_A
            or not torch.is_autocast_enabled(x.device.type)):
        return None
    dtype = torch.get_autocast_dtype(x.device.type)
    if x.dtype != dtype or getattr(base, "compute_dtype", None) != dtype:
        return None
    name = self.active_adapters[0]
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    return self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p, dtype, x.dtype


def _lean_forward(self, x, *args, **kwargs):
    """A vanilla LoRA Linear's forward (peft's, adapters on, not merged) with the branch as `lora_branch`, or added
    inside its last product (`lora_add`) where the layer was given the fused add."""
    import torch

    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or any(name in self.lora_variant for name in self.active_adapters)):
        return type(self).forward(self, x, *args, **kwargs)
    # A checkpointed layer's last product, run again for the backward: only its weight is needed there
    skip = self.lean_output_unused and not args and not kwargs and _replaying()
    one = _one_adapter(self, x, args, kwargs)
    if one is not None:  # base and branch in one function (a 4-bit base under autocast, the GPU recipe's case)
        with torch.autocast(x.device.type, enabled=False):
            return _base_and_branch().apply(x, self.base_layer, *one, self.lean_kernels, skip, self.lean_nf4,
                                            self.lean_scaled)
    if skip:
        result = _weight_only().apply(x, self.base_layer, self.lean_nf4)
    else:
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
            kernels = self.lean_kernels
            if self.lean_fused_add and result.dtype == dtype:
                result = lora_add(result, x, a, b, self.scaling[name], p, dtype, early, kernels)
            else:
                result = result + lora_branch(x, a, b, self.scaling[name], p, dtype, early, kernels)
    return result.to(out_dtype)


def _replaying() -> bool:
    from talkalike.train.qlora import recomputing

    return recomputing()


# Architectures whose decoder layer returns `residual + mlp(...)`: nothing in the layer reads the MLP's down
# projection's output but the layer's result (Gemma's, say, normalizes it first, so it is not here).
RESIDUAL_MLP = ("llama", "mistral", "qwen2", "qwen3")


def skip_unread_outputs(model) -> int:
    """When a checkpointed layer runs again for its backward (train/qlora.py, `offloaded_checkpoint`), its MLP's
    down projection skips its 4-bit product: only the layer's output reads it, and that output is never read then.
    For `RESIDUAL_MLP` architectures and lean 4-bit layers (`use_lean_lora`); returns how many layers skip it."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in RESIDUAL_MLP:
        return 0
    count = 0
    for name, module in model.named_modules():
        if name.endswith("mlp.down_proj") and getattr(module, "lean_four_bit", False):
            module.lean_output_unused = True
            count += 1
    return count


def use_lean_lora(model, fused_add: bool = False, kernels: bool = False, base: bool = False,
                  nf4: bool = False, scaled: bool = False) -> int:
    """Give every vanilla LoRA Linear of `model` (no bias on B, no DoRA or other variant) the lean branch, per
    instance; returns how many. Layers that peft builds otherwise keep their own forward. `fused_add`: the branch
    adds into the base layer's output inside its last matrix product (`lora_add`) where the two share a dtype.
    `kernels`: dropout's mask drawn inside the branch's r-wide products (train/lora_kernels.py) where it can be.
    `base`: with `fused_add`, a 4-bit base layer and its branch as one function (`BaseAndBranch`) under autocast.
    `nf4`: those functions de-quantize an NF4 base weight in one launch (train/nf4.py), not through bitsandbytes.
    `scaled`: their backward on a GPU takes the scaling inside x's side's r-wide product (cuBLAS's alpha) and
    writes B's gradient in fp32 from its product."""
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
        module.lean_kernels = kernels
        module.lean_base = base
        module.lean_nf4 = nf4
        module.lean_scaled = scaled
        module.lean_output_unused = False  # (skip_unread_outputs)
        module.forward = types.MethodType(_lean_forward, module)
        count += 1
    return count
