"""LoRA's branch as one function that keeps no copy of its input (train/lean_lora.py) computes what peft computes:
the same outputs and gradients, dropout's mask drawn again in the backward from the forward's random state."""

import pytest

from tests.conftest import build_tiny_llama

torch = pytest.importorskip("torch")


def _lora_model(dropout: float = 0.3, targets=("q_proj", "k_proj", "down_proj", "lm_head")):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llama("mistral").train()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(targets)))
    with torch.no_grad():  # B starts at zero, which would hide a wrong gradient for A
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def _loss_and_grads(model, ids, autocast: bool = False, seed: int = 7):
    model.zero_grad()
    torch.manual_seed(seed)  # the dropout masks of the forward pass
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


IDS = torch.randint(3, 211, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_lean_branch_gives_peft_s_loss_and_gradients(autocast, dropout):
    from talkalike.train.lean_lora import use_lean_lora

    model = _lora_model(dropout)
    reference_loss, reference = _loss_and_grads(model, IDS, autocast)
    assert use_lean_lora(model) == 2 * 3 + 1  # q, k and down in both layers, and the head
    loss, grads = _loss_and_grads(model, IDS, autocast)
    assert grads.keys() == reference.keys() and sum("lora_A" in name for name in grads) == 7
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=0, atol=0, msg=name)
    if dropout:  # another random state would draw other masks: the comparison above can fail
        assert not torch.equal(_loss_and_grads(model, IDS, autocast, seed=8)[0], reference_loss)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_fused_add_is_as_close_to_fp32_as_peft_s_bf16(dropout):
    """The branch added inside its last product rounds once where peft rounds three times. In fp32 it gives peft's
    loss and gradients to fp32's rounding; under bf16 autocast each gradient is about as far from the fp32 one as
    peft's own bf16 gradient is (no more than 1.5 times as far, and never by more than 1% of its size)."""
    from talkalike.train import lean_lora

    model = _lora_model(dropout)
    exact_loss, exact = _loss_and_grads(model, IDS)
    _, peft_bf16 = _loss_and_grads(model, IDS, autocast=True)
    assert lean_lora.use_lean_lora(model, fused_add=True) == 2 * 3 + 1
    fused_calls = []
    add = lean_lora.lora_add
    lean_lora.lora_add = lambda *args: fused_calls.append(1) or add(*args)
    try:
        loss, fp32 = _loss_and_grads(model, IDS)
        assert len(fused_calls) == 7  # every adapted projection took the fused add
        _, bf16 = _loss_and_grads(model, IDS, autocast=True)
        assert len(fused_calls) == 14  # under autocast too (the base's output and the branch are both bf16)
    finally:
        lean_lora.lora_add = add
    torch.testing.assert_close(loss, exact_loss, rtol=1e-6, atol=1e-6)
    assert fp32.keys() == exact.keys() == bf16.keys()
    for name, grad in fp32.items():
        torch.testing.assert_close(grad, exact[name], rtol=1e-4, atol=1e-6, msg=name)
        size = exact[name].abs().max()
        ours, peft = ((g[name] - exact[name]).abs().max() / size for g in (bf16, peft_bf16))
        assert ours <= max(1.5 * peft, 0.01), name


def test_lora_add_adds_into_a_3d_output_and_takes_its_gradients():
    """`lora_add` adds into a 3-d base output of any batch and length, and returns its shape."""
    from talkalike.train.lean_lora import lora_add, lora_branch

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, generator=gen, requires_grad=True)
    result = torch.randn(2, 5, 6, generator=gen, requires_grad=True)
    a = torch.randn(3, 8, generator=gen, requires_grad=True)
    b = torch.randn(6, 3, generator=gen, requires_grad=True)
    fused = lora_add(result, x, a, b, 2.0, 0.0, torch.float32)
    plain = result + lora_branch(x, a, b, 2.0, 0.0, torch.float32)
    assert fused.shape == result.shape
    torch.testing.assert_close(fused, plain)
    weights = torch.randn(2, 5, 6, generator=gen)
    got = torch.autograd.grad((fused * weights).sum(), (result, x, a, b))
    want = torch.autograd.grad((plain * weights).sum(), (result, x, a, b))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_the_mask_is_drawn_again_under_checkpointing_and_random_draws_in_between():
    """The backward runs long after the forward, with other layers' draws in between; it must still use its own."""
    from talkalike.train.lean_lora import use_lean_lora

    model = _lora_model()
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    reference_loss, reference = _loss_and_grads(model, IDS)
    use_lean_lora(model)
    loss, grads = _loss_and_grads(model, IDS)
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=0, atol=0, msg=name)


def test_the_branch_keeps_no_copy_of_its_input():
    """What autograd holds for the backward: peft's branch keeps a dropped-out copy of x; the lean one only x itself
    and the r-wide product."""
    from talkalike.train.lean_lora import use_lean_lora

    def saved_bytes(model):
        layer = model.base_model.model.model.layers[0].mlp.down_proj
        x = torch.randn(64, layer.in_features, requires_grad=True)
        seen = []

        def pack(tensor):
            if tensor.data_ptr() != x.data_ptr():
                seen.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(seen)

    model = _lora_model(targets=("down_proj",))
    with model.disable_adapter():
        base = saved_bytes(model)  # what the base layer keeps (its weight)
    before = saved_bytes(model) - base
    use_lean_lora(model)
    after = saved_bytes(model) - base
    down = model.base_model.model.model.layers[0].mlp.down_proj
    assert before >= 64 * down.in_features * 4  # the dropped-out copy of x, in fp32
    lora = sum(p.numel() * 4 for p in (down.lora_A["default"].weight, down.lora_B["default"].weight))
    assert 0 < after <= 64 * 4 * 4 + lora  # dropout(x) @ A.T (64 rows of r = 4), and the adapter's own weights


def test_disabled_adapters_and_eval_mode_take_the_usual_path():
    from talkalike.train.lean_lora import use_lean_lora

    model = _lora_model()
    use_lean_lora(model)
    model.eval()
    with torch.no_grad():
        on = model(input_ids=IDS).logits
        with model.disable_adapter():
            off = model(input_ids=IDS).logits
    assert not torch.allclose(on, off)
    model.unload()  # drops the adapters: the base model's own modules
    with torch.no_grad():
        torch.testing.assert_close(model.base_model.model(input_ids=IDS).logits, off)


def test_dora_layers_keep_peft_s_forward():
    from peft import LoraConfig, get_peft_model

    from talkalike.train.lean_lora import use_lean_lora

    model = get_peft_model(build_tiny_llama("mistral"), LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert use_lean_lora(model) == 0


@pytest.mark.parametrize("skip", [False, True], ids=["computed", "skipped"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_base_and_branch_in_one_function_give_the_layer_and_lora_add_s_gradients(dropout, skip):
    """BaseAndBranch (a 4-bit base under autocast on the GPU) computes the base layer and the branch as one function
    whose x gradient is one tensor (the branch's part added into the base's in place): the same output and
    gradients as the base layer plus `lora_add`. With `skip` the base's product is not computed: the output is not
    the layer's (nothing reads it), the gradients are."""
    from talkalike.train.lean_lora import _base_and_branch, lora_add

    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(12, 10, bias=False)
    layer.requires_grad_(False)
    x = torch.randn(2, 7, 12, generator=generator, requires_grad=True)
    a = torch.randn(4, 12, generator=generator, requires_grad=True)
    b = torch.randn(10, 4, generator=generator, requires_grad=True)
    weight = torch.randn(2, 7, 10, generator=generator)

    def run(function):
        for tensor in (x, a, b):
            tensor.grad = None
        torch.manual_seed(3)
        out = function()
        (out * weight).sum().backward()
        return out.detach(), [t.grad.clone() for t in (x, a, b)]

    expected, reference = run(lambda: lora_add(layer(x), x, a, b, 2.0, dropout, torch.float32))
    out, grads = run(lambda: _base_and_branch().apply(x, layer, a, b, 2.0, dropout, torch.float32, torch.float32,
                                                      False, skip, False))
    if not skip:
        torch.testing.assert_close(out, expected)
    for grad, want, name in zip(grads, reference, "xab", strict=True):
        torch.testing.assert_close(grad, want, msg=name)


def test_base_and_branch_add_the_branch_into_the_base_output_itself():
    """Out-of-place addmm first copies the base output whole (a device-to-device copy per projection on the GPU, 448
    an optimizer step of a 7B model); BaseAndBranch adds into it, so its output is the base layer's own tensor."""
    from talkalike.train.lean_lora import _base_and_branch

    layer = torch.nn.Linear(12, 10, bias=False).requires_grad_(False)
    outputs = []
    layer.register_forward_hook(lambda module, args, out: outputs.append(out))
    x = torch.randn(2, 7, 12, requires_grad=True)
    a, b = torch.randn(4, 12, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    with torch.no_grad():
        expected = layer(x) + 2.0 * (x @ a.t()) @ b.t()
    out = _base_and_branch().apply(x, layer, a, b, 2.0, 0.0, torch.float32, torch.float32, False, False, False)
    assert out.data_ptr() == outputs[-1].data_ptr()
    torch.testing.assert_close(out.detach(), expected)
