"""Decode engines: the forward passes of one conversation, each behind the same two calls.

    engine = build(pick(twin, max_len), twin, max_len)
    logits = engine.prefill(prompt_ids)      # [1, vocab] at the last prompt position
    logits = engine.step(token)              # append one token (a one-element tensor), its logits [1, vocab]

stream.py runs the token loop over any of them. Each engine is one module with `fits(twin, max_len)` and
`build(twin, max_len)`; adding one means adding its module and its line in ENGINES.
"""

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from talkalike.decode.twin import Twin


class Engine(Protocol):
    """The forward passes of one conversation at a time; a new prefill starts a new conversation."""

    device: Any  # where the logits live
    max_len: int  # positions the cache holds: prompt + reply

    def prefill(self, ids: list[int]) -> Any: ...

    def step(self, token: Any) -> Any: ...


@dataclass(frozen=True)
class Entry:
    module: str  # in this package
    device: str | None = None  # the only device it runs on; checked before the module is imported
    needs: str | None = None  # a package it imports at the top


# The first that fits a twin decodes it, so the specialised engines come before the general one.
ENGINES = {
    "gemma_cpu": Entry("gemma_cpu", device="cpu"),  # a run's merged Gemma 3, memory-mapped (the CPU chat)
    "triton": Entry("triton_step", device="cuda", needs="triton"),  # plain Llama-family models on a GPU
    "compile": Entry("cuda_graph", device="cuda"),  # any model on a GPU, as CUDA graphs
    "eager": Entry("eager"),  # any transformers model, adapter on or off
}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{ENGINES[name].module}")


def pick(twin: "Twin", max_len: int, graphs: bool = True) -> str:
    """The first engine in ENGINES that can decode `twin` with `max_len` positions; `graphs=False` leaves out the
    engines that capture CUDA graphs (a graph replays the adapter state it was captured with)."""
    for name, entry in ENGINES.items():
        if entry.device not in (None, twin.device.type) or (entry.device == "cuda" and not graphs):
            continue
        if entry.needs and importlib.util.find_spec(entry.needs) is None:
            continue
        if _module(name).fits(twin, max_len):
            return name
    raise AssertionError("the eager engine fits every model")


def build(name: str, twin: "Twin", max_len: int, **options) -> Engine:
    """Engine `name` over `twin`'s model, with a cache of `max_len` positions."""
    return _module(name).build(twin, max_len, **options)


def apply_rope(x, cos, sin):
    """RoPE as the Llama and Gemma families apply it: x * cos + rotate_half(x) * sin."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
