"""Per-sample attention over packed rows (train/packed.py) is the masked SDPA path's maths, for less work."""

import pytest

from tests.conftest import build_windowed_gemma

torch = pytest.importorskip("torch")


def _packed_row(lengths: list[int], vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, sum(lengths)), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, positions


def _loss_and_grads(model, ids, positions):
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_packed_attention_gives_the_masked_paths_loss_and_gradients_across_windows_and_samples():
    from talkalike.train.packed import NAME, use_packed_attention

    model = build_windowed_gemma(97).train()  # sliding window 8, grouped-query attention (4 query, 2 kv heads)
    model.set_attn_implementation("sdpa")
    # Samples longer and shorter than the window, and one token long, in one padding-free row.
    ids, positions = _packed_row([13, 5, 1, 20, 8], 97)
    reference_loss, reference = _loss_and_grads(model, ids, positions)
    use_packed_attention(model)
    assert model.config._attn_implementation == NAME
    loss, grads = _loss_and_grads(model, ids, positions)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == reference.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_packed_attention_keeps_samples_apart():
    """Changing one packed sample leaves the next sample's outputs as they were: nothing attends across."""
    from talkalike.train.packed import use_packed_attention

    model = build_windowed_gemma(97).eval()
    use_packed_attention(model)
    ids, positions = _packed_row([12, 10], 97)
    changed = ids.clone()
    changed[0, :12] = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        first = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        second = model(input_ids=changed, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(first[0, 12:], second[0, 12:])
    assert not torch.allclose(first[0, :12], second[0, :12])


def test_calls_packing_does_not_cover_go_to_sdpa_unchanged():
    """A padded batch of two rows and decoding with a cache give the same logits as the SDPA path."""
    from talkalike.train.packed import use_packed_attention

    model = build_windowed_gemma(97).eval()
    ids = torch.randint(3, 97, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        cached = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
        use_packed_attention(model)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, padded)
        assert torch.equal(model.generate(ids[:1], max_new_tokens=6, do_sample=False), cached)
