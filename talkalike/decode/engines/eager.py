"""The general engine: a transformers model's own forward with a DynamicCache, adapter on or off (the caller's
`Twin.adapter` context), on any device. On a CPU the single-token products can go through torch.mv (`use_gemv`).
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


def _gemv_forward(self, x):
    """nn.Linear.forward, but a single token goes through torch.mv: on CPU in bf16 it reads the weight at memory
    speed, where F.linear's GEMM path is slower for one row (benchmarks/decode_cpu.py). Decode reads every weight
    once per token, so this is most of the time per token."""
    import torch

    if x.numel() == x.shape[-1] and x.dtype == self.weight.dtype:
        out = torch.mv(self.weight, x.reshape(-1))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], out.shape[-1])
    return torch.nn.functional.linear(x, self.weight, self.bias)


def use_gemv(model, enabled: bool = True) -> int:
    """Route the single-token forward of every plain nn.Linear (LM head, projections, LoRA's frozen base layers)
    through torch.mv, or back (enabled=False); returns how many layers. Weights and state_dict are untouched."""
    import types

    import torch

    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # exactly Linear: LoRA wrappers and quantized layers keep their own
            if enabled:
                module.forward = types.MethodType(_gemv_forward, module)
            else:
                module.__dict__.pop("forward", None)
            count += 1
    return count
