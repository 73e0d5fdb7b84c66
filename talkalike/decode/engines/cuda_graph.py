"""GPU decode for one stream: a static KV cache and the one-token step replayed as CUDA graphs by torch.compile.

Decoding one token reads every weight once, so the limit is weight bytes / memory bandwidth. Eager PyTorch spends
most of each step launching a few thousand small kernels from Python; a static cache gives every step identical
shapes and addresses, so the whole step can be captured once and replayed as a CUDA graph per token. The prompt is
prefilled eagerly (it has its own length). A graph's output lives in a buffer that the next replay overwrites, so
`step` clones it and marks each call as a new step (else cudagraph trees raise "overwritten by a subsequent run").

The step is `FusedStep` where the model allows (a plain Llama-family model: q/k/v and gate/up concatenated once into
one weight each, attention reading each cached key/value head once for its group of query heads; triton_step.py runs
its decode as Triton kernels), else the model's own forward with transformers' StaticCache (other architectures,
adapters, 4-bit weights). benchmarks/gpu_decode.py measures them against plain `generate` on a GPU machine.
"""

import copy

from talkalike.decode.engines import apply_rope

FUSABLE = ("llama", "mistral", "qwen2")  # same layer maths: pre-norm, rotate-half RoPE, GQA, gated MLP


def fits(twin, max_len: int) -> bool:
    """Any model on a CUDA device."""
    return twin.device.type == "cuda"


def build(twin, max_len: int, **options) -> "GraphEngine":
    return GraphEngine(twin.model, max_len, **options)


class GraphEngine:
    """Single-stream decoding with a static cache; build once per model and reuse across replies."""

    def __init__(self, model, max_len: int = 4096, tune_kernels: bool = True, fuse: bool = True,
                 mode: str = "reduce-overhead"):
        import torch

        self.device = next(model.parameters()).device
        assert self.device.type == "cuda", "GraphEngine needs the model on a CUDA device"
        self.model, self.max_len = model, max_len
        self.fused = FusedStep(model, max_len) if fuse and FusedStep.supports(model, max_len) else None
        if tune_kernels:
            # Let inductor tune its generated kernels' launch parameters for these exact (batch 1) shapes: a slower
            # first compile for faster kernels on every later token.
            import torch._inductor.config as inductor_config

            inductor_config.coordinate_descent_tuning = True
        if self.fused is not None:
            self._step = torch.compile(self.fused.step, mode=mode, fullgraph=True, dynamic=False)
            return
        from transformers import StaticCache

        # Every layer gets a full-length static cache, sliding-window layers included: a sliding cache layer keeps a
        # Python-side fill counter that changes every token, which makes torch.compile recompile each step. The
        # attention masks still apply the model's own sliding window.
        cache_config = copy.deepcopy(model.config.get_text_config(decoder=True))
        cache_config.layer_types = ["full_attention"] * cache_config.num_hidden_layers
        self.cache = StaticCache(config=cache_config, max_cache_len=max_len)
        self._step = torch.compile(self._forward, mode=mode, fullgraph=True, dynamic=False)

    def _forward(self, input_ids, cache_position):
        out = self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0), cache_position=cache_position,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def prefill(self, ids: list[int]):
        import torch

        tensor = torch.tensor([ids], device=self.device)
        self.position = torch.tensor([len(ids)], device=self.device)
        if self.fused is not None:
            return self.fused.prefill(tensor)
        self.cache.reset()  # inside inference mode: the cache tensors were made there
        return self.model(input_ids=tensor, cache_position=torch.arange(len(ids), device=self.device),
                          past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def step(self, token):
        import torch

        torch.compiler.cudagraph_mark_step_begin()
        logits = self._step(token.view(1, 1), self.position).clone()
        self.position += 1
        return logits


class FusedStep:
    """The decode maths of a plain Llama-family model with fused q/k/v and gate/up weights and its own static cache.

    Runs eagerly on any device (tests/decode/test_fastdecode.py checks it on the CPU); GraphEngine compiles `step`.
    """

    @staticmethod
    def supports(model, max_cache_len: int) -> bool:
        """Whether `model` is a plain Llama-family causal LM whose decode this class reproduces exactly."""
        import torch

        config = model.config
        if getattr(config, "model_type", None) not in FUSABLE or hasattr(model, "peft_config"):
            return False
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
            return False
        if getattr(inner.rotary_emb, "rope_type", "default") in ("dynamic", "longrope"):
            return False  # frequencies that depend on the sequence length, not on the position alone
        window = getattr(config, "sliding_window", None)
        if window and window < max_cache_len and (getattr(config, "use_sliding_window", True) is not False):
            return False  # the windowed mask is the generic path's job
        for layer in inner.layers:
            linears = [getattr(layer.self_attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            linears += [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            if any(type(m) is not torch.nn.Linear for m in linears):  # adapters and 4-bit layers subclass or wrap
                return False
            if len({m.bias is None for m in linears[:3]}) > 1 or len({m.bias is None for m in linears[4:6]}) > 1:
                return False  # fused biases are all or none
        return type(model.lm_head) is torch.nn.Linear

    def __init__(self, model, max_cache_len: int):
        import torch

        config = model.config
        inner = model.model
        attn = inner.layers[0].self_attn
        self.model, self.max_cache_len = model, max_cache_len
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.layers = list(inner.layers)
        weight = inner.layers[0].self_attn.q_proj.weight
        device, dtype = weight.device, weight.dtype
        self.qkv, self.qkv_bias, self.gate_up, self.gate_up_bias = [], [], [], []
        with torch.no_grad():
            for layer in self.layers:
                a, m = layer.self_attn, layer.mlp
                self.qkv.append(_fuse([a.q_proj, a.k_proj, a.v_proj]))
                self.qkv_bias.append(_fuse([a.q_proj, a.k_proj, a.v_proj], "bias"))
                self.gate_up.append(_fuse([m.gate_proj, m.up_proj]))
                self.gate_up_bias.append(_fuse([m.gate_proj, m.up_proj], "bias"))
            self.intermediate = self.layers[0].mlp.gate_proj.out_features
            positions = torch.arange(max_cache_len, device=device)
            # The model's own rotary module gives the cos/sin table (any scaling it applies included), once.
            cos, sin = inner.rotary_emb(torch.zeros(1, device=device, dtype=dtype), positions[None])
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]
        self.positions = positions
        shape = (1, self.kv_heads, max_cache_len, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        # Fixed addresses that CUDA graphs may write to and read from in place, as transformers' StaticCache does.
        for tensor in [*self.keys, *self.values, *self.qkv, *self.gate_up, self.cos, self.sin, self.positions]:
            torch._dynamo.mark_static_address(tensor)
        for bias in self.qkv_bias + self.gate_up_bias:
            if bias is not None:
                torch._dynamo.mark_static_address(bias)

    @staticmethod
    def _linear(h, weight, bias=None):
        import torch.nn.functional as F

        return F.linear(h, weight, bias)

    def _qkv(self, i: int, h):
        """One matrix product for the layer's q [1, len, heads, d], k and v [1, len, kv_heads, d]."""
        out = self._linear(h, self.qkv[i], self.qkv_bias[i])
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        length = h.shape[1]
        q = out[..., :q_size].view(1, length, self.heads, self.head_dim)
        k = out[..., q_size : q_size + kv_size].view(1, length, self.kv_heads, self.head_dim)
        v = out[..., q_size + kv_size :].view(1, length, self.kv_heads, self.head_dim)
        return q, k, v

    def _mlp(self, i: int, x):
        layer = self.layers[i]
        h = layer.post_attention_layernorm(x)
        gate, up = self._linear(h, self.gate_up[i], self.gate_up_bias[i]).split(self.intermediate, dim=-1)
        down = layer.mlp.down_proj
        return x + self._linear(layer.mlp.act_fn(gate) * up, down.weight, down.bias)

    def _logits(self, x):
        head = self.model.lm_head
        return self._linear(self.model.model.norm(x[:, -1:]), head.weight, head.bias)[:, -1, :]

    def prefill(self, ids, store=None):
        """Run the prompt `ids` [1, n] causally, writing its keys and values at positions 0..n-1; last logits.
        `store(layer, keys, values)` ([1, kv heads, n, head dim] each) writes them elsewhere (serve's slots)."""
        import torch.nn.functional as F

        n = ids.shape[1]
        cos, sin = self.cos[:n][None, :, None, :], self.sin[:n][None, :, None, :]
        x = self.model.model.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x))
            q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
            v = v.transpose(1, 2)
            if store is None:
                self.keys[i][:, :, :n] = k
                self.values[i][:, :, :n] = v
            else:
                store(i, k, v)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling,
                                                 enable_gqa=self.heads != self.kv_heads)
            x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
            x = self._mlp(i, x)
        return self._logits(x)

    def step(self, token, position):
        """One token [1, 1] at `position` [1]: append its key/value to the cache and return the logits [1, vocab]."""
        import torch.nn.functional as F

        group = self.heads // self.kv_heads
        cos, sin = self.cos[position][None, :, None, :], self.sin[position][None, :, None, :]
        # Keys at or before this position; the cache beyond holds stale values from earlier replies.
        visible = (self.positions <= position).view(1, 1, 1, -1)
        x = self.model.model.embed_tokens(token)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer.input_layernorm(x))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.keys[i].index_copy_(2, position, k.transpose(1, 2))
            self.values[i].index_copy_(2, position, v.transpose(1, 2))
            # Each key/value head serves `group` query heads: laid out as `group` query rows of that head, one
            # attention call reads the cache once, with no copy of it per query head.
            q = q.view(1, self.kv_heads, group, self.head_dim)
            out = F.scaled_dot_product_attention(q, self.keys[i], self.values[i], attn_mask=visible, scale=self.scaling)
            o_proj = layer.self_attn.o_proj
            x = x + self._linear(out.reshape(1, 1, -1), o_proj.weight, o_proj.bias)
            x = self._mlp(i, x)
        return self._logits(x)


def _fuse(linears: list, attribute: str = "weight"):
    """One tensor holding the linears' weights (or biases) stacked by output rows; theirs become views of it."""
    import torch

    parts = [getattr(m, attribute) for m in linears]
    if all(p is None for p in parts):
        return None
    fused = torch.cat([p.detach() for p in parts], dim=0)
    start = 0
    for p in parts:
        p.data = fused[start : start + p.shape[0]]  # same values, shared storage: no second copy of the weights
        start += p.shape[0]
    return fused
