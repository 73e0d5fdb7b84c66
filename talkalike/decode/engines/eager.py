"""The general engine: a transformers model's own forward with a DynamicCache, adapter on or off (the caller's
`Twin.adapter` context), on any device.
"""

import inspect


def fits(twin, max_len: int) -> bool:
    """Every transformers causal LM."""
    return True


def build(twin, max_len: int) -> "EagerEngine":
    return EagerEngine(twin.model, twin.device, max_len, cache_kwarg(twin.model))


def cache_kwarg(model) -> str:
    """The forward() argument that takes the KV cache: `cache` in recent transformers, `past_key_values` before
    (the old name still works there, with a deprecation warning on every chat start)."""
    from talkalike.model import causal_lm

    core = causal_lm(model)
    return "cache" if "cache" in inspect.signature(type(core).forward).parameters else "past_key_values"


class EagerEngine:
    """One forward call per prefill and per token."""

    def __init__(self, model, device, max_len: int, kv: str):
        self.model, self.device, self.max_len, self.kv = model, device, max_len, kv
        self.cache = None

    def prefill(self, ids: list[int]):
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        # logits_to_keep=1: the prefill needs only the last position's logits, not prompt x 262k vocabulary.
        return self._forward(torch.tensor([ids], device=self.device))

    def step(self, token):
        return self._forward(token.view(1, 1))

    def _forward(self, ids):
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.kv: self.cache})
        return out.logits[:, -1]
