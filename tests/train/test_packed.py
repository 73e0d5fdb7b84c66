"""Per-sample attention over packed rows (train/packed.py) is the masked SDPA path's maths, for less work."""

import pytest

from tests.conftest import build_tiny_llama, build_windowed_gemma

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


def _causal_per_sample(q, k, v, bounds, scale=None):
    """A stand-in varlen kernel's work: causal SDPA within each sample of [T, heads, D] rows, on the CPU."""
    outs = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        piece = [t[start:end].transpose(0, 1) for t in (q, k, v)]
        outs.append(torch.nn.functional.scaled_dot_product_attention(*piece, is_causal=True, scale=scale))
    return torch.cat(outs, dim=1).transpose(0, 1)


def test_varlen_attention_takes_q_k_and_v_as_views_and_gives_per_sample_gradients(monkeypatch):
    """The varlen path (CUDA; here a stand-in kernel that runs causal SDPA per sample on the CPU) hands q, k and v to
    the kernel as views of the row: no select whose backward fills a zero tensor and copies each gradient in, and
    the gradients are per-sample causal attention's."""
    from talkalike.train import packed

    bounds = [0, 5, 12, 20]

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, is_causal=False):  # [T, heads, D]
        assert is_causal and cu_q.tolist() == bounds
        return _causal_per_sample(q, k, v, bounds, scale)

    monkeypatch.setattr(packed, "_varlen_function", lambda: (varlen_attn, ("scale", "is_causal")))
    generator = torch.Generator().manual_seed(0)
    # [1, heads, T, D] views of [1, T, heads, D], as RoPE leaves them
    query, key, value = (torch.randn(1, 2, 20, 8, generator=generator).transpose(1, 2).contiguous().transpose(1, 2)
                         .requires_grad_() for _ in range(3))
    out = packed._varlen(query, key, value, torch.tensor(bounds, dtype=torch.int32), 8, None, None)
    seen, stack = {}, [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = node
            stack.extend(next_node for next_node, _ in node.next_functions)
    names = {type(node).__name__ for node in seen.values()}
    assert "SelectBackward0" not in names and "CloneBackward0" not in names
    weight = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad((out * weight).sum(), (query, key, value))
    reference_inputs = [t.detach().clone().requires_grad_() for t in (query, key, value)]
    attention = torch.nn.functional.scaled_dot_product_attention
    pieces = [attention(*[t[:, :, s:e] for t in reference_inputs], is_causal=True)
              for s, e in zip(bounds, bounds[1:], strict=False)]
    reference = torch.cat(pieces, dim=2).transpose(1, 2)  # [1, T, heads, D]
    torch.testing.assert_close(out.detach(), reference.detach())
    expected = torch.autograd.grad((reference * weight).sum(), reference_inputs)
    for grad, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("refuses", [False, True], ids=["serves-groups", "checks-heads"])
def test_native_gqa_hands_unrepeated_keys_to_the_kernel_with_repeated_keys_results(monkeypatch, refuses):
    """With native_gqa, a grouped-query layer's keys and values reach the varlen kernel with their own heads (here a
    stand-in that serves each group from one head, as FlashAttention does), with the same output and gradients as
    repeating them first; a PyTorch whose kernel checks the heads match gets them repeated."""
    from talkalike.train import packed

    bounds, seen = [0, 6, 15], []

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, is_causal=False):  # [T, heads, D]
        seen.append(k.shape[1])
        if k.shape[1] != q.shape[1]:
            if refuses:
                raise ValueError("heads differ")
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return _causal_per_sample(q, k, v, bounds, scale)

    monkeypatch.setattr(packed, "_varlen_function", lambda: (varlen_attn, ("scale", "is_causal")))
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 15, 8, generator=generator).requires_grad_()
    key, value = (torch.randn(1, 2, 15, 8, generator=generator).requires_grad_() for _ in range(2))
    cumulative = torch.tensor(bounds, dtype=torch.int32)
    weight = torch.randn(1, 15, 4, 8, generator=generator)
    results = {}
    for native in (False, True):
        out = packed._varlen(query, key, value, cumulative, 9, None, None, native_gqa=native)
        results[native] = (out.detach(), torch.autograd.grad((out * weight).sum(), (query, key, value)))
    assert seen == ([4, 2, 4] if refuses else [4, 2])  # repeated; then unrepeated (and, if refused, repeated again)
    torch.testing.assert_close(results[True][0], results[False][0])
    for grad, want in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(grad, want)


def test_use_packed_attention_marks_the_grouped_query_layers():
    from talkalike.train.packed import use_packed_attention

    model = build_tiny_llama("mistral")
    layers = [m for m in model.modules() if hasattr(m, "num_key_value_groups")]
    assert layers
    use_packed_attention(model, native_gqa=True)
    assert all(m.talkalike_native_gqa for m in layers)
    use_packed_attention(model)
    assert not any(m.talkalike_native_gqa for m in layers)
