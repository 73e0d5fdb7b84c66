"""Memory for the GPU path: k-bit preparation that keeps frozen weights small, and an LM head applied in chunks.

QLoRA's memory is the quantized weights plus whatever else stays resident. Two things dominate that "else" for chat
data packed into long rows (benchmarks/gpu_train.py measures them):
- peft's `prepare_model_for_kbit_training` up-casts every frozen non-quantized weight to fp32: the embeddings and the
  LM head double in size (1 GB more for Mistral-7B, more for big vocabularies) and nothing trains them.
- logits: rows x vocabulary, in bf16, then fp32 for the loss, then their gradient. For a 4k-token micro-batch that
  is about 1.3 GB at a 32k vocabulary and 10 GB at Gemma's 262k.

`prepare_kbit` does what peft's preparation does for training, minus the up-cast. `HeadLoss` runs the model's own
forward with the LM head swapped for an identity, so the forward returns hidden states only at labelled positions,
then applies the real head (LoRA included) and the cross-entropy in row chunks under activation checkpointing: one
chunk's logits exist at a time, in the forward and again in the backward.
"""

from contextlib import contextmanager


def prepare_kbit(model, gradient_checkpointing: bool = True):
    """Ready a 4-bit model for adapter training without up-casting its frozen weights to fp32."""
    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing, and inputs that require grad so checkpointed blocks see a graph to recompute.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def _chunk_rows(vocab_size: int) -> int:
    # ~64 MiB of fp32 logits a chunk: 2,048 rows at a 32k vocabulary, 256 at 262k.
    return max(64, 2**24 // vocab_size)


@contextmanager
def deferred_head(model):
    """Inside, the PEFT model's forward stops before its LM head and returns hidden states; yields the real head."""
    base = model.get_base_model()
    head = base.get_output_embeddings()
    assert getattr(base.config, "final_logit_softcapping", None) is None, "soft-capped logits need the full head"
    import torch

    base.lm_head = torch.nn.Identity()
    try:
        yield head
    finally:
        base.lm_head = head


def head_loss_sum(head, hidden, targets, chunk_rows: int | None = None):
    """Sum of cross-entropy over rows of `hidden` [N, H] against `targets` [N], the head applied chunk by chunk."""
    import torch
    from torch.nn.functional import cross_entropy
    from torch.utils.checkpoint import checkpoint

    dtype = head.weight.dtype  # accelerate hands mixed-precision outputs back in fp32; the head runs in its own dtype

    def chunk_loss(h, y):
        return cross_entropy(head(h.to(dtype)).float(), y, reduction="sum")

    rows = chunk_rows or _chunk_rows(head.weight.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        total = total + checkpoint(chunk_loss, hidden[start : start + rows], targets[start : start + rows],
                                   use_reentrant=False)
    return total


def release_optimizer_overrides() -> None:
    """Forget the embedding modules that transformers registered with bitsandbytes' global 8-bit optimizer manager.

    Trainer registers every nn.Embedding with that process-wide singleton whenever it builds an 8-bit optimizer, and
    nothing unregisters them, so each training run in one process keeps its model's embedding alive on the GPU
    (0.24 GB for Mistral-7B, 0.56 GB for Gemma's 262k vocabulary in bf16). Call between trainings in one process.
    """
    import sys

    if "bitsandbytes" in sys.modules:
        from bitsandbytes.optim import GlobalOptimManager

        GlobalOptimManager.get_instance().module_weight_config_triple.clear()
