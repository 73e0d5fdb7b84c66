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

Activations: `offloaded_checkpoint` keeps each checkpointed decoder layer's input in pinned host memory, not on the
GPU, and a layer run again for its backward says so (`recomputing`) so it can skip what nothing reads then;
`prefetched_checkpoint` also copies the next layer's input back while a layer computes its backward.
"""

import threading
import weakref
from contextlib import ExitStack, contextmanager
from functools import cache


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


_REPLAY = threading.local()


def recomputing() -> bool:
    """Whether a checkpointed layer is being run again for its backward pass (`offloaded_checkpoint`): what it
    computes then is only what the backward needs; its output is never read."""
    return getattr(_REPLAY, "on", False)


def offloaded_checkpoint(function, hidden, *args):
    """Activation checkpointing of one decoder layer that keeps the layer's input in pinned host memory, not on the GPU.

    Plain checkpointing keeps each layer's input on the GPU until the backward pass (at 8k tokens a micro-batch, 64 MB
    a layer for a 7B model, 2 GB in all). This copies it to the host on a side stream while the next layers compute,
    and back when the backward pass reaches the layer, which then runs again with gradients, as checkpointing does,
    with the same random state (LoRA dropout draws the same masks). It lets a micro-batch hold several times the
    tokens at the same peak memory, and a micro-batch's cost on the GPU host is mostly fixed (BENCHMARKS.md, "GPU
    training"). Used as transformers' `_gradient_checkpointing_func`: `function` is the layer with its keyword
    arguments bound, `hidden` its input hidden states.

    With `prefetch` (`use_offloaded_checkpoints`), a layer's backward first starts copying the next layer's input
    back on another side stream, so that copy overlaps this layer's work instead of holding up the next one's.
    """
    import torch

    if any(torch.is_tensor(arg) and arg.requires_grad for arg in args):  # only the hidden states are replayed
        from torch.utils.checkpoint import checkpoint

        return checkpoint(function, hidden, *args, use_reentrant=False)
    return _offloaded_layer().apply(function, False, hidden, *args)


def prefetched_checkpoint(function, hidden, *args):
    """`offloaded_checkpoint`, each layer's backward starting the copy back of the next one's input."""
    import torch

    if any(torch.is_tensor(arg) and arg.requires_grad for arg in args):
        return offloaded_checkpoint(function, hidden, *args)
    return _offloaded_layer().apply(function, True, hidden, *args)


@cache
def _copy_stream(device, back: bool = False):
    """The side stream that copies checkpointed inputs to the host (or, `back`, to the GPU again), one per GPU."""
    import torch

    return torch.cuda.Stream(device)


class _Saved:
    """A checkpointed layer's input: its host copy and the event that marks the copy done (None for a CPU tensor,
    kept as it is); once prefetched, its GPU copy and the event that marks that copy done."""

    __slots__ = ("host", "done", "device", "back", "arrived", "__weakref__")

    def __init__(self, host, done, device):
        self.host, self.done, self.device = host, done, device
        self.back = self.arrived = None


def _offload(tensor) -> _Saved:
    """A host copy of a GPU tensor made on a side stream; a CPU tensor as it is."""
    import torch

    if tensor.device.type != "cuda":
        return _Saved(tensor.detach(), None, tensor.device)
    stream = _copy_stream(tensor.device)
    stream.wait_stream(torch.cuda.current_stream(tensor.device))
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    with torch.cuda.stream(stream):
        host.copy_(tensor, non_blocking=True)
    tensor.record_stream(stream)  # the allocator must not reuse its memory before the copy has read it
    return _Saved(host, stream.record_event(), tensor.device)


def _prefetch(saved: _Saved) -> None:
    """Start copying a saved input back to its GPU on a side stream; `_reload` waits for it there."""
    import torch

    if saved.done is None or saved.back is not None:
        return
    current = torch.cuda.current_stream(saved.device)
    stream = _copy_stream(saved.device, back=True)
    # Allocated for the current stream, whose queued work may still read the memory it reuses: the copy waits for
    # that work (all of it queued before this layer's backward, so the copy overlaps this layer's).
    saved.back = torch.empty(saved.host.shape, dtype=saved.host.dtype, device=saved.device)
    stream.wait_stream(current)
    stream.wait_event(saved.done)
    with torch.cuda.stream(stream):
        saved.back.copy_(saved.host, non_blocking=True)
    saved.back.record_stream(stream)  # (should it be dropped unread, its memory waits for the copy)
    saved.arrived = stream.record_event()


def _reload(saved: _Saved):
    import torch

    if saved.done is None:
        return saved.host
    current = torch.cuda.current_stream(saved.device)
    if saved.back is not None:
        current.wait_event(saved.arrived)
        return saved.back
    current.wait_event(saved.done)
    return saved.host.to(saved.device, non_blocking=True)


# Per device, weak references to the inputs saved by prefetching layers' forwards, in order, not yet back for a
# backward (weak: a graph dropped without a backward drops its inputs with it). Shared by every thread: autograd runs
# a GPU's backward on a thread of its own, not the one that ran the forward.
_PENDING: dict = {}
_PENDING_LOCK = threading.Lock()


def _pending(device) -> list:
    with _PENDING_LOCK:
        return _PENDING.setdefault(str(device), [])


def _next_back(saved: _Saved) -> _Saved | None:
    """Take `saved` off its device's pending inputs; the one whose backward comes next (the last saved before it)."""
    with _PENDING_LOCK:
        pending = _PENDING.setdefault(str(saved.device), [])
        alive = [ref for ref in pending if ref() is not None and ref() is not saved]
        pending[:] = alive
        return alive[-1]() if alive else None


@cache
def _offloaded_layer():
    """The autograd function behind `offloaded_checkpoint` (defined once, on first use: torch is heavy)."""
    import torch

    class OffloadedLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, function, prefetch, hidden, *args):
            ctx.function, ctx.args, ctx.device, ctx.prefetch = function, args, hidden.device, prefetch
            ctx.autocast = [(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
                            for kind in ("cpu", "cuda")]
            ctx.rng = torch.get_rng_state(), (torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None)
            ctx.saved = _offload(hidden)
            if prefetch:
                pending = _pending(hidden.device)
                with _PENDING_LOCK:
                    pending.append(weakref.ref(ctx.saved))
            return function(hidden, *args)  # autograd records nothing inside: nothing but the output stays

        @staticmethod
        def backward(ctx, *grads):
            if ctx.prefetch and (following := _next_back(ctx.saved)) is not None:
                _prefetch(following)
            hidden = _reload(ctx.saved).detach().requires_grad_(True)
            devices = [ctx.device] if ctx.rng[1] is not None else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad(), ExitStack() as stack:
                torch.set_rng_state(ctx.rng[0])
                if ctx.rng[1] is not None:
                    torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
                for kind, enabled, dtype in ctx.autocast:
                    stack.enter_context(torch.autocast(kind, enabled=enabled, dtype=dtype))
                _REPLAY.on = True
                try:
                    outputs = ctx.function(hidden, *ctx.args)
                finally:
                    _REPLAY.on = False
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            pairs = [(out, grad) for out, grad in zip(outputs, grads, strict=False)
                     if grad is not None and torch.is_tensor(out) and out.requires_grad]
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
            arguments = len(ctx.args)
            ctx.saved = ctx.function = ctx.args = None
            return None, None, hidden.grad, *[None] * arguments

    return OffloadedLayer


def _checkpointed_layers(model) -> list:
    """`model`'s decoder layers that Trainer has checkpointing on for, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def use_offloaded_checkpoints(model, prefetch: bool = False) -> int:
    """Make every checkpointed decoder layer of `model` offload its input (`offloaded_checkpoint`, or with `prefetch`
    `prefetched_checkpoint`); how many."""
    layers = _checkpointed_layers(model)
    for layer in layers:
        layer._gradient_checkpointing_func = prefetched_checkpoint if prefetch else offloaded_checkpoint
    return len(layers)


def keep_whole(model, count: int) -> int:
    """Run the last `count` checkpointed decoder layers of `model` whole: they keep what their backward reads, as
    without checkpointing, instead of running again for it (selective recomputation: the memory a layer's replay saves,
    spent where a card has it). The last, since their backward comes first: their activations are gone before any
    layer runs again. Returns how many."""
    layers = _checkpointed_layers(model)
    count = max(0, min(count, len(layers)))
    for layer in layers[len(layers) - count:]:
        layer.gradient_checkpointing = False
    return count


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
