"""Checkpointed layers that keep their inputs in host memory (train/qlora.py: offloaded_checkpoint) train exactly as
plain checkpointing does: the same loss and gradients, LoRA dropout's masks replayed in the recomputation."""

import pytest

from tests.conftest import build_tiny_llama

torch = pytest.importorskip("torch")


def _loss_and_grads(model, ids):
    model.zero_grad()
    torch.manual_seed(7)  # the dropout masks of the forward pass
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _lora_model():
    from peft import LoraConfig, get_peft_model

    model = build_tiny_llama("mistral").train()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3,
                                             target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():  # B starts at zero, which would hide a wrong gradient for A
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return model


def test_offloaded_checkpoints_give_plain_checkpointings_loss_and_gradients_with_dropout_replayed():
    from talkalike.train.qlora import use_offloaded_checkpoints

    ids = torch.randint(3, 211, (2, 24), generator=torch.Generator().manual_seed(0))
    model = _lora_model()
    reference_loss, reference = _loss_and_grads(model, ids)
    assert use_offloaded_checkpoints(model) == 2  # both decoder layers
    loss, grads = _loss_and_grads(model, ids)
    assert grads.keys() == reference.keys() and any("lora_A" in name for name in grads)
    torch.testing.assert_close(loss, reference_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], msg=name)
    # Replaying other dropout masks would change the LoRA gradients: the comparison above can fail.
    torch.manual_seed(8)
    other = model(input_ids=ids, labels=ids, use_cache=False).loss
    assert not torch.allclose(other, reference_loss)


def test_each_prefetching_layer_s_backward_fetches_the_next_layer_s_input_and_nothing_stays_pending(monkeypatch):
    """With prefetch, the backward of each layer but the first starts bringing back the input of the layer whose
    backward comes next (train/qlora.py: `_prefetch`, a copy on a side stream on a GPU); loss and gradients are as
    before, and no saved input outlives its graph, with or without a backward. The backward runs on another thread,
    as autograd runs a GPU's (its own thread for the device)."""
    import gc
    import threading

    from talkalike.train import qlora

    ids = torch.randint(3, 211, (2, 24), generator=torch.Generator().manual_seed(0))
    model = _lora_model()
    reference_loss, reference = _loss_and_grads(model, ids)
    assert qlora.use_offloaded_checkpoints(model, prefetch=True) == 2
    inputs, fetched = [], []
    hooks = [layer.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(
        kwargs.get("hidden_states", args[0] if args else None)), with_kwargs=True)
        for layer in model.base_model.model.model.layers]
    original = qlora._prefetch
    monkeypatch.setattr(qlora, "_prefetch", lambda saved: fetched.append(saved.host) or original(saved))
    model.zero_grad()
    torch.manual_seed(7)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    backward = threading.Thread(target=loss.backward)
    backward.start()
    backward.join()
    torch.testing.assert_close(loss.detach(), reference_loss)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], msg=name)
    first_input = inputs[0]  # the forward's; the replays come after
    assert len(fetched) == 1 and fetched[0].data_ptr() == first_input.data_ptr()
    assert not [ref for ref in qlora._pending(ids.device) if ref() is not None]
    for hook in hooks:  # the layers' inputs hold their graphs
        hook.remove()
    inputs.clear()
    model(input_ids=ids, labels=ids, use_cache=False)  # a forward whose graph is dropped unused
    gc.collect()
    assert not [ref for ref in qlora._pending(ids.device) if ref() is not None]


def test_a_layer_argument_that_needs_a_gradient_falls_back_to_plain_checkpointing():
    from talkalike.train.qlora import offloaded_checkpoint

    weight = torch.randn(4, 4, requires_grad=True)
    hidden = torch.randn(3, 4, requires_grad=True)
    out = offloaded_checkpoint(lambda h, w: torch.tanh(h @ w), hidden, weight)
    out.sum().backward()
    expected_h, expected_w = torch.autograd.grad(torch.tanh(hidden @ weight).sum(), [hidden, weight])
    torch.testing.assert_close(weight.grad, expected_w)
    torch.testing.assert_close(hidden.grad, expected_h)


def test_a_layer_knows_when_it_runs_again_for_its_backward():
    """`recomputing()` is what lets a replayed layer skip work whose output nothing reads (train/lean_lora.py): true
    only while offloaded checkpointing runs a layer again for the backward pass."""
    from talkalike.train.qlora import recomputing, use_offloaded_checkpoints

    ids = torch.randint(3, 211, (2, 24), generator=torch.Generator().manual_seed(0))
    model = _lora_model()
    assert use_offloaded_checkpoints(model) == 2
    seen = []
    for layer in model.base_model.model.model.layers:
        layer.mlp.register_forward_hook(lambda module, args, out: seen.append(recomputing()))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    assert seen == [False, False]
    loss.backward()
    assert seen == [False, False, True, True] and not recomputing()


def test_only_residual_mlp_architectures_mark_their_4bit_down_projections():
    """skip_unread_outputs marks the down projection of lean 4-bit LoRA layers where the decoder layer adds the MLP's
    output straight to the residual; a full-precision base, or Gemma's normalized MLP output, keeps its product."""
    from peft import LoraConfig, get_peft_model

    from talkalike.train.lean_lora import skip_unread_outputs, use_lean_lora
    from tests.conftest import build_windowed_gemma

    model = _lora_model()
    use_lean_lora(model)
    assert skip_unread_outputs(model) == 0  # full-precision base layers: their product is cheap to keep as it is
    for module in model.modules():
        if hasattr(module, "lean_four_bit"):
            module.lean_four_bit = True  # as a bitsandbytes 4-bit layer reads
    assert skip_unread_outputs(model) == 2
    marked = [name for name, module in model.named_modules() if getattr(module, "lean_output_unused", False)]
    assert marked and all(name.endswith("mlp.down_proj") for name in marked)
    gemma = get_peft_model(build_windowed_gemma(211), LoraConfig(r=4, target_modules=["down_proj"]))
    use_lean_lora(gemma)
    for module in gemma.modules():
        if hasattr(module, "lean_four_bit"):
            module.lean_four_bit = True
    assert skip_unread_outputs(gemma) == 0


def test_layers_kept_whole_skip_the_replay_and_train_as_the_checkpointed_ones_do(monkeypatch):
    """Selective recomputation (train/qlora.py: keep_whole): the last layer runs whole, the first offloaded; the same
    loss and gradients, and only the first layer runs again for the backward."""
    from talkalike.train import qlora

    ids = torch.randint(3, 211, (2, 24), generator=torch.Generator().manual_seed(0))
    model = _lora_model()
    reference_loss, reference = _loss_and_grads(model, ids)
    layers = model.base_model.model.model.layers
    assert qlora.keep_whole(model, 1) == 1
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    assert qlora.use_offloaded_checkpoints(model) == 1
    calls = []
    for i, layer in enumerate(layers):  # (checkpointing replays the layer's class forward: count its MLP's calls)
        layer.mlp.forward = lambda *args, i=i, own=layer.mlp.forward, **kwargs: calls.append(i) or own(*args, **kwargs)
    loss, grads = _loss_and_grads(model, ids)
    for layer in layers:
        del layer.mlp.forward
    assert calls == [0, 1, 0]  # the forward, then the first layer's replay
    torch.testing.assert_close(loss, reference_loss)
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], msg=name)
    assert qlora.keep_whole(model, 5) == 1  # no more than are checkpointed
    assert not any(layer.gradient_checkpointing for layer in layers)
