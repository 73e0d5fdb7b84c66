"""A run's trained token rows at reply time: the same values as peft's merged table, without building it."""

import pytest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_token_rows_in_place_give_peft_s_logits_with_the_adapter_on_and_off(dtype):
    import torch
    from peft import LoraConfig, get_peft_model

    from talkalike.model import token_rows_in_place
    from tests.conftest import build_windowed_gemma

    model = build_windowed_gemma(vocab_size=97).to(getattr(torch, dtype))
    model.config.tie_word_embeddings = True
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[5, 11],
                                             init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.normal_()
    model.eval()
    ids = torch.tensor([[2, 5, 3, 11, 11, 40, 5, 96]])

    def logits():
        with torch.no_grad():
            on = model(input_ids=ids).logits
            with model.disable_adapter():
                off = model(input_ids=ids).logits
        return on, off

    peft_on, peft_off = logits()
    assert token_rows_in_place(model) == 2  # the embedding and the tied head
    ours_on, ours_off = logits()
    assert torch.equal(ours_off, peft_off)
    tolerance = 2e-2 if dtype == "bfloat16" else 1e-5
    assert torch.allclose(ours_on, peft_on, atol=tolerance, rtol=tolerance)
    assert not torch.allclose(peft_on, peft_off, atol=tolerance)  # the rows change the logits: the test can fail


def test_token_rows_in_place_train_the_rows_and_adapters_with_peft_s_gradients():
    """In training too (make_trainer switches them on): the same loss and the same gradient for every trained weight,
    without the whole table's copy and its whole-table gradient."""
    import torch
    from peft import LoraConfig, get_peft_model

    from talkalike.model import token_rows_in_place
    from tests.conftest import build_windowed_gemma

    def loss_and_grads(in_place: bool):
        model = build_windowed_gemma(vocab_size=97)
        model.config.tie_word_embeddings = True
        torch.manual_seed(3)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                 trainable_token_indices=[5, 11], init_lora_weights=False))
        if in_place:
            assert token_rows_in_place(model) == 2
        model.train()
        ids = torch.tensor([[2, 5, 3, 11, 11, 40, 5, 96, 11, 7]])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    peft_loss, peft_grads = loss_and_grads(False)
    loss, grads = loss_and_grads(True)
    torch.testing.assert_close(loss, peft_loss)
    assert grads.keys() == peft_grads.keys() and any("trainable_tokens_delta" in n for n in grads)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, peft_grads[name], rtol=1e-5, atol=1e-6, msg=name)
