"""Attention over packed rows, one sample at a time: no work on the pairs that packing masks out.

Training packs several samples into one row of up to 1,024 tokens (padding-free: the position ids restart at each
sample). transformers' SDPA path then builds a dense row x row mask that blocks attention across samples, and the CPU
kernel computes every block of it, masked or not: on the embedded model that was 18% of a training step on a 2-core CPU
(the demo's samples average ~380 tokens, so a row holds two or three). `packed_attention` instead runs SDPA on each
sample's own slice of the row with `is_causal`, which is the same maths (tests/train/test_packed.py checks the loss
and every gradient against the masked path) for a fraction of the work.

    use_packed_attention(model)   # before training; the row's samples are read from its position ids
    model(..., position_ids=positions, **sample_bounds(positions))   # on a GPU: the bounds, found once per forward

On a CUDA GPU, with `sample_bounds`' keyword arguments (the names transformers' flash-attention path reads), a bf16 or
fp16 row goes through PyTorch's variable-length flash attention (`torch.nn.attention.varlen`) in one call per layer:
no mask, no masked blocks, and no per-sample loop whose Python and launches would stall a GPU that waits on its host
(the QLoRA step was host-bound: BENCHMARKS.md, "GPU training").
"""

from functools import cache

NAME = "talkalike_packed"


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, position_ids=None, **kwargs):
    """SDPA per packed sample of a single row with no mask (what `packed_mask` leaves for a padding-free row); any
    other call (a padding mask, a cache, several rows, a soft cap) goes to transformers' own SDPA path unchanged."""
    import torch

    q_length = query.shape[2]
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1 or key.shape[2] != q_length
            or kwargs.get("softcap") is not None):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     sliding_window=sliding_window, position_ids=position_ids, **kwargs)
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not dropout:
        output = _varlen(query, key, value, cu_seq_lens, kwargs["max_length_q"], scaling, sliding_window,
                         native_gqa=getattr(module, "talkalike_native_gqa", False))
        if output is not None:
            return output, None
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    bounds = cu_seq_lens.tolist() if cu_seq_lens is not None else _bounds(position_ids[0])
    outputs = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        length = end - start
        if sliding_window and length > sliding_window:  # a local layer: each token sees its last `window` tokens
            rows = torch.arange(length, device=query.device)
            offset = rows[:, None] - rows[None, :]
            band = (offset >= 0) & (offset < sliding_window)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout,
                                                                    scale=scaling)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                    is_causal=True)
        outputs.append(out)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


def _bounds(positions) -> list[int]:
    """Where each packed sample starts, and the row's end: a sample starts wherever the position does not follow on, as
    transformers' own packed-sequence mask reads it."""
    starts = ((positions[1:] - positions[:-1]) != 1).nonzero().flatten().add(1).tolist()
    return [0, *starts, positions.numel()]


def sample_bounds(position_ids) -> dict:
    """The keyword arguments that tell `packed_attention` where the samples of a padding-free row start: cumulative
    lengths (int32, on the row's device) and the longest sample, read once for every layer of a forward."""
    import torch

    bounds = _bounds(position_ids[0])
    cumulative = torch.tensor(bounds, dtype=torch.int32).to(position_ids.device, non_blocking=True)
    longest = max(end - start for start, end in zip(bounds, bounds[1:], strict=False))
    return {"cu_seq_lens_q": cumulative, "cu_seq_lens_k": cumulative, "max_length_q": longest,
            "max_length_k": longest}


@cache
def _varlen_function():
    """PyTorch's varlen_attn and the names of its parameters (they changed between releases), or (None, ())."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, ()
    return varlen_attn, tuple(inspect.signature(varlen_attn).parameters)


def _varlen(query, key, value, cu_seq_lens, longest: int, scaling, sliding_window, native_gqa: bool = False):
    """Causal attention within each packed sample through PyTorch's variable-length flash attention, [1, T, H, D];
    None where this PyTorch has none (before 2.10) or lacks what the call needs (a sliding window).

    Grouped-query attention (fewer key/value heads than query heads): where `varlen_attn` has no `enable_gqa`, keys
    and values are repeated to every query head, unless `native_gqa`: then they go to the flash kernel as they are
    (which serves each group from one head, as FlashAttention does), and are repeated only if this PyTorch refuses."""
    varlen_attn, accepts = _varlen_function()
    if varlen_attn is None:
        return None
    options = {"scale": scaling}
    if "window_size" in accepts:  # (left, right): -1 is unbounded; a window of W sees the W - 1 tokens before
        options["window_size"] = (sliding_window - 1 if sliding_window else -1, 0)
    elif "is_causal" in accepts and not sliding_window:
        options["is_causal"] = True
    else:
        return None
    # [T, heads, D] as views: squeeze, not t[0], whose backward would fill a zero tensor and copy each gradient in
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))
    grouped = k.shape[1] != q.shape[1]
    if grouped and "enable_gqa" in accepts:
        options["enable_gqa"] = True
    elif grouped and not native_gqa:
        k, v = _repeated(q, k, v)

    def attend(k, v):
        return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens, cu_seq_lens, longest, longest,
                           **options)

    if grouped and native_gqa and "enable_gqa" not in accepts:
        try:
            return attend(k, v)[None]
        except (RuntimeError, ValueError):  # a PyTorch that checks the heads match
            k, v = _repeated(q, k, v)
    return attend(k, v)[None]


def _repeated(q, k, v):
    """Keys and values [T, kv heads, D] repeated to q's heads, each group's head next to itself."""
    groups = q.shape[1] // k.shape[1]
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def packed_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask=None, **kwargs):
    """No mask for a single padding-free row without a cache (`packed_attention` reads the samples from the position
    ids); SDPA's own mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and batch_size == 1 and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask=attention_mask, **kwargs)


def use_packed_attention(model, native_gqa: bool = False) -> None:
    """Switch `model` (loaded with SDPA attention) to per-sample attention over packed rows; `native_gqa`: its
    grouped-query layers hand keys and values to the varlen flash kernel unrepeated (`_varlen`)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, packed_mask)
    model.set_attn_implementation(NAME)
    for module in model.modules():
        if hasattr(module, "num_key_value_groups"):
            module.talkalike_native_gqa = native_gqa
