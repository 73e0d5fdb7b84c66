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
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "down_proj"]))
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


def test_a_layer_argument_that_needs_a_gradient_falls_back_to_plain_checkpointing():
    from talkalike.train.qlora import offloaded_checkpoint

    weight = torch.randn(4, 4, requires_grad=True)
    hidden = torch.randn(3, 4, requires_grad=True)
    out = offloaded_checkpoint(lambda h, w: torch.tanh(h @ w), hidden, weight)
    out.sum().backward()
    expected_h, expected_w = torch.autograd.grad(torch.tanh(hidden @ weight).sum(), [hidden, weight])
    torch.testing.assert_close(weight.grad, expected_w)
    torch.testing.assert_close(hidden.grad, expected_h)
