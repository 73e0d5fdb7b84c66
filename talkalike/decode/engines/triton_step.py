"""The one-token decode step of a Llama-family model as six Triton kernels a layer, replayed as one CUDA graph.

Decoding one token reads every weight once, so the step is bound by memory bandwidth; what keeps it from the limit
is everything that is not streaming weights: launches, small kernels between the matrix products, and an attention
kernel that a one-token query leaves mostly idle. Per layer this step runs:

1. RMSNorm + q/k/v product (+ bias): the norm is folded into the product (each program sums x^2 as it streams);
2. attention, split over the cache ("flash-decoding"): RoPE on q and the new k, the new k/v written into the static
   cache, and each (key/value head, 64 cache positions) its own program, so a short cache still fills the GPU;
3. the splits combined into the attention output;
4. o product + residual;
5. RMSNorm + gate/up product + SiLU(gate) * up (a program holds the same rows of both);
6. down product + residual.

Every matrix-vector kernel takes its block shape from a short timed search over the real weights at start (each
shape is timed over all layers, so the L2 cache can't flatter a small matrix). Nothing is compiled by torch, so a
start costs the Triton compiles (cached on disk by Triton) and a graph capture.

`FusedStep` (cuda_graph.py) prefills the prompt and owns the weights and the cache; `TritonStep` is its decode step.
It needs CUDA and Triton; on the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1), which is how
tests/decode/test_tritondecode.py checks them without a GPU.
"""

import os

import triton
import triton.language as tl

from talkalike.decode.engines.cuda_graph import FusedStep

ATTENTION_BLOCK = 64  # cache positions per attention program: 8 heads x 13 programs already at a 784-token cache
GROUP_PAD = 16  # query rows per attention program, padded to the matrix unit's smallest tile
# (rows per program, K per iteration, warps): the candidates each shape is timed with.
MATVEC_CONFIGS = (
    (2, 1024, 4), (1, 2048, 4), (1, 4096, 8), (2, 2048, 8), (4, 512, 4), (4, 1024, 8), (8, 512, 8), (16, 256, 8),
    (4, 1024, 16), (2, 2048, 16),
)


def fits(twin, max_len: int) -> bool:
    """A plain Llama-family model (FusedStep) with a SiLU MLP, a head size the attention tiles take (a power of 2,
    at least 16) and at most GROUP_PAD query heads per key/value head."""
    model = twin.model
    if twin.device.type != "cuda" or not FusedStep.supports(model, max_len):
        return False
    return model.config.hidden_act == "silu" and head_fits(
        model.config.num_attention_heads, model.config.num_key_value_heads, model.model.layers[0].self_attn.head_dim)


def head_fits(heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether the attention kernels' tiles take these heads: a head size that is a power of 2, at least 16, and at
    most GROUP_PAD query heads per key/value head."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0 and heads // kv_heads <= GROUP_PAD


def build(twin, max_len: int, tune_kernels: bool = True) -> "TritonStep":
    return TritonStep(FusedStep(twin.model, max_len), tune=tune_kernels)


@triton.jit
def _round(x, dtype: tl.constexpr):
    """x rounded to the activations' dtype and back: where the model's own ops round, so do we."""
    return x.to(dtype).to(tl.float32)


@triton.jit
def _matvec_kernel(x_ptr, w_ptr, out_ptr, res_ptr, norm_ptr, bias_ptr, eps,
                   N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, GATED: tl.constexpr, BIAS: tl.constexpr,
                   RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[rows] = W[rows] @ x, with the optional RMSNorm of x, bias, SiLU(gate) * up and residual around it."""
    dtype = x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if NORM:
            # RMSNorm's scale 1/rms(x) is one number: applied after the sum, so x is streamed once.
            squares += x * x
            x = x * tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        mask = row_ok[:, None] & col_ok[None, :]
        # Weights are read once per token: evict them first so activations and the cache keep the L2.
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
        if GATED:  # the up rows follow the gate rows in the fused weight
            u = tl.load(w_ptr + (rows[:, None] + N) * K + cols[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first")
            acc_up += u.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    up = tl.sum(acc_up, axis=1)
    if NORM:
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        y = y * rstd
        up = up * rstd
    if BIAS:
        y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if GATED:
            up += tl.load(bias_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32)
    y = _round(y, dtype)
    if GATED:
        y = _round(_round(y * tl.sigmoid(y), dtype) * _round(up, dtype), dtype)
    if RESIDUAL:
        y = _round(y + tl.load(res_ptr + rows, mask=row_ok, other=0.0).to(tl.float32), dtype)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _rope(x, partner, cos, sin, sign, dtype: tl.constexpr):
    """Rotate-half RoPE (x * cos + rotate_half(x) * sin), rounded after each op as the model's bf16 tensors are."""
    return _round(_round(x * cos, dtype) + _round(sign * partner * sin, dtype), dtype)


@triton.jit
def _dot(a, b, EXACT: tl.constexpr):
    """a @ b with fp32 accumulation: on the matrix unit, or (EXACT) as fp32 products of the operands' values."""
    if EXACT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _attention_split_kernel(qkv_ptr, cos_ptr, sin_ptr, keys_ptr, values_ptr, pos_ptr, part_out_ptr, part_stats_ptr,
                            scale, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
                            GROUP_PAD: tl.constexpr, DIM: tl.constexpr, CACHE: tl.constexpr, BLOCK: tl.constexpr,
                            SPLITS: tl.constexpr, EXACT: tl.constexpr):
    """One key/value head's query group against BLOCK cache positions: partial softmax statistics and output."""
    dtype = qkv_ptr.dtype.element_ty
    kv = tl.program_id(0)
    split = tl.program_id(1)
    pos = tl.load(pos_ptr)
    d = tl.arange(0, DIM)
    partner = (d + DIM // 2) % DIM
    sign = tl.where(d < DIM // 2, -1.0, 1.0)
    cos = tl.load(cos_ptr + pos * DIM + d).to(tl.float32)
    sin = tl.load(sin_ptr + pos * DIM + d).to(tl.float32)
    g = tl.arange(0, GROUP_PAD)
    g_ok = g < GROUP
    q_rows = (kv * GROUP + g) * DIM
    q = tl.load(qkv_ptr + q_rows[:, None] + d[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    q_partner = tl.load(qkv_ptr + q_rows[:, None] + partner[None, :], mask=g_ok[:, None], other=0.0).to(tl.float32)
    q = _rope(q, q_partner, cos[None, :], sin[None, :], sign[None, :], dtype)
    k_at = (HEADS + kv) * DIM
    k_new = _rope(tl.load(qkv_ptr + k_at + d).to(tl.float32), tl.load(qkv_ptr + k_at + partner).to(tl.float32),
                  cos, sin, sign, dtype).to(dtype)
    v_new = tl.load(qkv_ptr + (HEADS + KV_HEADS + kv) * DIM + d)

    start = split * BLOCK
    n = start + tl.arange(0, BLOCK)
    head = kv * CACHE * DIM
    rows = head + n[:, None] * DIM + d[None, :]
    # The program whose positions hold `pos` writes the new key and value; it takes them from registers, and no other
    # program reads that row in this step. (Masks are built from vectors only: Triton 3.9's interpreter rejects a
    # vector mask combined with a scalar condition.)
    here = (n[:, None] == pos) & (d[None, :] < DIM)
    tl.store(keys_ptr + rows, tl.broadcast_to(k_new[None, :], (BLOCK, DIM)), mask=here)
    tl.store(values_ptr + rows, tl.broadcast_to(v_new[None, :], (BLOCK, DIM)), mask=here)
    earlier = (n < pos)[:, None]
    k = tl.load(keys_ptr + rows, mask=earlier, other=0.0)
    v = tl.load(values_ptr + rows, mask=earlier, other=0.0)
    k = tl.where(here, k_new[None, :], k)
    v = tl.where(here, v_new[None, :], v)

    scores = _dot(q.to(dtype), tl.trans(k), EXACT) * scale  # [GROUP_PAD, BLOCK]
    scores = tl.where((n <= pos)[None, :], scores, float("-inf"))
    top = tl.max(scores, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)  # a split past `pos` has no visible position; it stores nothing
    p = tl.exp(scores - top[:, None])
    total = tl.sum(p, axis=1)
    out = _dot(p.to(dtype), v, EXACT)  # [GROUP_PAD, DIM]
    h = kv * GROUP + g
    active = g_ok & (start + tl.zeros((GROUP_PAD,), tl.int32) <= pos)  # this split saw a position
    tl.store(part_out_ptr + (h[:, None] * SPLITS + split) * DIM + d[None, :], out, mask=active[:, None])
    tl.store(part_stats_ptr + (h * SPLITS + split) * 2, top, mask=active)
    tl.store(part_stats_ptr + (h * SPLITS + split) * 2 + 1, total, mask=active)


@triton.jit
def _attention_combine_kernel(part_out_ptr, part_stats_ptr, pos_ptr, out_ptr, DIM: tl.constexpr,
                              BLOCK: tl.constexpr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """One query head's output from the splits that saw a position: their softmax sums rescaled to one maximum."""
    h = tl.program_id(0)
    used = tl.load(pos_ptr) // BLOCK + 1
    s = tl.arange(0, SPLITS_PAD)
    s_ok = s < used
    top = tl.load(part_stats_ptr + (h * SPLITS + s) * 2, mask=s_ok, other=float("-inf"))
    total = tl.load(part_stats_ptr + (h * SPLITS + s) * 2 + 1, mask=s_ok, other=0.0)
    weight = tl.where(s_ok, tl.exp(top - tl.max(top, axis=0)), 0.0)
    d = tl.arange(0, DIM)
    parts = tl.load(part_out_ptr + (h * SPLITS + s[:, None]) * DIM + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(weight[:, None] * parts, axis=0) / tl.sum(weight * total, axis=0)
    tl.store(out_ptr + h * DIM + d, out.to(out_ptr.dtype.element_ty))


@triton.jit
def _slot_attention_split_kernel(q_ptr, keys_ptr, values_ptr, pos_ptr, part_out_ptr, part_stats_ptr, scale,
                                 HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
                                 GROUP_PAD: tl.constexpr, DIM: tl.constexpr, CACHE: tl.constexpr,
                                 BLOCK: tl.constexpr, SPLITS: tl.constexpr, EXACT: tl.constexpr):
    """One slot's key/value head's query group against BLOCK positions of that slot's cache: partial softmax
    statistics and output, or nothing at all where the block holds none of the slot's positions."""
    dtype = q_ptr.dtype.element_ty
    row = tl.program_id(0)
    kv = tl.program_id(1)
    split = tl.program_id(2)
    pos = tl.load(pos_ptr + row)
    first = tl.where(pos == CACHE - 1, pos, 0)  # an idle slot (stepped at the last position) sees only that one
    start = split * BLOCK
    if (start > pos) | (start + BLOCK <= first):
        return  # most programs of a long cache: no loads, no stores (the combine reads only the splits in range)
    d = tl.arange(0, DIM)
    g = tl.arange(0, GROUP_PAD)
    g_ok = g < GROUP
    h = kv * GROUP + g
    q = tl.load(q_ptr + (row * HEADS + h)[:, None] * DIM + d[None, :], mask=g_ok[:, None], other=0.0)
    n = start + tl.arange(0, BLOCK)
    seen = (n <= pos) & (n >= first)
    at = (row * KV_HEADS + kv) * CACHE * DIM + n[:, None] * DIM + d[None, :]
    k = tl.load(keys_ptr + at, mask=seen[:, None], other=0.0)
    v = tl.load(values_ptr + at, mask=seen[:, None], other=0.0)
    scores = _dot(q.to(dtype), tl.trans(k), EXACT) * scale  # [GROUP_PAD, BLOCK]
    scores = tl.where(seen[None, :], scores, float("-inf"))
    top = tl.max(scores, axis=1)  # finite: the block holds a visible position
    p = tl.exp(scores - top[:, None])
    total = tl.sum(p, axis=1)
    out = _dot(p.to(dtype), v, EXACT)  # [GROUP_PAD, DIM]
    part = (row * HEADS + h) * SPLITS + split
    tl.store(part_out_ptr + part[:, None] * DIM + d[None, :], out, mask=g_ok[:, None])
    tl.store(part_stats_ptr + part * 2, top, mask=g_ok)
    tl.store(part_stats_ptr + part * 2 + 1, total, mask=g_ok)


@triton.jit
def _slot_attention_combine_kernel(part_out_ptr, part_stats_ptr, pos_ptr, out_ptr, HEADS: tl.constexpr,
                                   DIM: tl.constexpr, CACHE: tl.constexpr, BLOCK: tl.constexpr,
                                   SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr):
    """One slot's query head: the splits that saw one of the slot's positions, rescaled to one maximum."""
    row = tl.program_id(0)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + row)
    first = tl.where(pos == CACHE - 1, pos, 0)
    s = tl.arange(0, SPLITS_PAD)
    s_ok = (s >= first // BLOCK) & (s <= pos // BLOCK)
    part = (row * HEADS + h) * SPLITS + s
    top = tl.load(part_stats_ptr + part * 2, mask=s_ok, other=float("-inf"))
    total = tl.load(part_stats_ptr + part * 2 + 1, mask=s_ok, other=0.0)
    weight = tl.where(s_ok, tl.exp(top - tl.max(top, axis=0)), 0.0)
    d = tl.arange(0, DIM)
    parts = tl.load(part_out_ptr + part[:, None] * DIM + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(weight[:, None] * parts, axis=0) / tl.sum(weight * total, axis=0)
    tl.store(out_ptr + (row * HEADS + h) * DIM + d, out.to(out_ptr.dtype.element_ty))


def slot_attention(q, keys, values, positions, scale: float, out=None):
    """Each row's query heads q [rows, heads, dim] against its own cache keys/values [rows, kv_heads, max_len, dim]
    at positions 0..positions[row] (a row at max_len - 1, an idle slot, sees only that one): [rows, heads, dim].

    Reads no position past a row's own (its programs over later blocks exit at once) and never reads `positions`
    on the host, so a CUDA graph replays it for any positions."""
    import torch

    rows, heads, dim = q.shape
    kv_heads, max_len = keys.shape[1], keys.shape[2]
    assert keys.is_contiguous() and values.is_contiguous() and keys.shape == values.shape
    assert head_fits(heads, kv_heads, dim)
    q, positions = q.contiguous(), positions.contiguous()
    splits = triton.cdiv(max_len, ATTENTION_BLOCK)
    # Exact fp32 products for fp32 models and under the interpreter, as TritonStep (see its comment).
    exact = q.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    part_out = torch.empty(rows, heads, splits, dim, dtype=torch.float32, device=q.device)
    part_stats = torch.empty(rows, heads, splits, 2, dtype=torch.float32, device=q.device)
    if out is None:
        out = torch.empty_like(q)
    _slot_attention_split_kernel[(rows, kv_heads, splits)](
        q, keys, values, positions, part_out, part_stats, scale, HEADS=heads, KV_HEADS=kv_heads,
        GROUP=heads // kv_heads, GROUP_PAD=GROUP_PAD, DIM=dim, CACHE=max_len, BLOCK=ATTENTION_BLOCK, SPLITS=splits,
        EXACT=exact, num_warps=4)
    _slot_attention_combine_kernel[(rows, heads)](
        part_out, part_stats, positions, out, HEADS=heads, DIM=dim, CACHE=max_len, BLOCK=ATTENTION_BLOCK,
        SPLITS=splits, SPLITS_PAD=max(2, triton.next_power_of_2(splits)), num_warps=4)
    return out


def matvec(x, weight, out, config, norm=None, eps: float = 0.0, bias=None, residual=None, gated: bool = False):
    """Launch `_matvec_kernel`: out = W x (gated: rows of SiLU(gate) * up, W holding gate then up rows)."""
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    k = weight.shape[1]
    block_n, block_k, warps = config
    block_k = min(block_k, triton.next_power_of_2(k))
    _matvec_kernel[(triton.cdiv(n, block_n),)](
        x, weight, out, x if residual is None else residual, x if norm is None else norm, x if bias is None else bias,
        eps, N=n, K=k, NORM=norm is not None, GATED=gated, BIAS=bias is not None, RESIDUAL=residual is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)


class TritonStep:
    """The decode step of a `FusedStep`'s model as Triton kernels over static buffers, captured as one CUDA graph.

    `prefill(ids)` fills the cache (the FusedStep's eager prompt pass) and sets the position; each `step(token)`
    appends one token and returns the logits [1, vocab] in a buffer the next step overwrites (in stream order, so
    whatever reads it before the next step reads this step's).
    """

    def __init__(self, fused, tune: bool = True, graph: bool = True):
        import torch

        self.fused, self.max_len = fused, fused.max_cache_len
        model, config = fused.model, fused.model.config
        weight = fused.qkv[0]
        device, dtype = weight.device, weight.dtype
        self.device = device
        assert head_fits(fused.heads, fused.kv_heads, fused.head_dim), "head_dim: a power of 2, >= 16; group <= 16"
        self.group = fused.heads // fused.kv_heads
        self.splits = triton.cdiv(fused.max_cache_len, ATTENTION_BLOCK)
        # Exact fp32 products for fp32 models (tf32 would round their operands), and under Triton's interpreter,
        # which multiplies bf16 operands' bit patterns as integers; bf16 products are exact in fp32 either way.
        self.exact = dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
        self.embed = model.model.embed_tokens.weight.detach()  # index_select(out=) refuses tensors needing grad
        self.layers = []
        for i, layer in enumerate(fused.layers):
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                input_norm=layer.input_layernorm.weight, input_eps=layer.input_layernorm.variance_epsilon,
                qkv=fused.qkv[i], qkv_bias=fused.qkv_bias[i], o=attn.o_proj.weight, o_bias=attn.o_proj.bias,
                post_norm=layer.post_attention_layernorm.weight,
                post_eps=layer.post_attention_layernorm.variance_epsilon,
                gate_up=fused.gate_up[i], gate_up_bias=fused.gate_up_bias[i],
                down=mlp.down_proj.weight, down_bias=mlp.down_proj.bias))
        for layer in self.layers:
            for key in ("qkv", "o", "gate_up", "down"):
                assert layer[key].is_contiguous(), f"{key} weight must be contiguous"
        self.final_norm, self.final_eps = model.model.norm.weight, model.model.norm.variance_epsilon
        self.head, self.head_bias = model.lm_head.weight.contiguous(), model.lm_head.bias

        def buffer(*shape, kind=dtype):
            return torch.zeros(*shape, dtype=kind, device=device)

        self.token, self.position = buffer(1, kind=torch.long), buffer(1, kind=torch.long)
        self.x, self.x2 = buffer(config.hidden_size), buffer(config.hidden_size)
        self.qkv = buffer(fused.qkv[0].shape[0])
        self.attn = buffer(fused.heads * fused.head_dim)
        self.h = buffer(fused.intermediate)
        self.logits = buffer(1, self.head.shape[0])
        self.part_out = buffer(fused.heads, self.splits, fused.head_dim, kind=torch.float32)
        self.part_stats = buffer(fused.heads, self.splits, 2, kind=torch.float32)
        self.configs = {role: MATVEC_CONFIGS[0] for role in ("qkv", "o", "gate_up", "down", "head")}
        self.timings: dict[str, dict] = {}  # role -> {config: ms for all layers}, from the search at start
        self.graph = None
        with torch.no_grad():
            if tune:
                self._tune()
            if graph:
                self._capture()

    def _product(self, role: str, layer: dict | None, config) -> None:
        """One matrix-vector product of the step: a layer's q/k/v, o, gate/up or down, or the LM head."""
        if role == "qkv":
            matvec(self.x, layer["qkv"], self.qkv, config, norm=layer["input_norm"], eps=layer["input_eps"],
                   bias=layer["qkv_bias"])
        elif role == "o":
            matvec(self.attn, layer["o"], self.x2, config, bias=layer["o_bias"], residual=self.x)
        elif role == "gate_up":
            matvec(self.x2, layer["gate_up"], self.h, config, norm=layer["post_norm"], eps=layer["post_eps"],
                   bias=layer["gate_up_bias"], gated=True)
        elif role == "down":
            matvec(self.h, layer["down"], self.x, config, bias=layer["down_bias"], residual=self.x2)
        else:
            matvec(self.x, self.head, self.logits, config, norm=self.final_norm, eps=self.final_eps,
                   bias=self.head_bias)

    def _matvecs(self, role: str, config) -> None:
        """Every layer's product of one role (or the LM head) with `config`, as the step runs them."""
        for layer in [None] if role == "head" else self.layers:
            self._product(role, layer, config)

    def _tune(self) -> None:
        """For each role, the candidate block shape that streams all layers' weights fastest on this GPU.

        Each candidate's launches are timed as a CUDA graph, as the step runs them: timed from Python, a small
        product's launch (tens of microseconds) would outlast the product itself."""
        import torch

        for role in self.configs:
            timings = {}
            for config in MATVEC_CONFIGS:
                self._matvecs(role, config)  # compile and warm up outside the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._matvecs(role, config)
                graph.replay()
                times = []
                for _ in range(5):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    graph.replay()
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
                timings[config] = sorted(times)[2]
                del graph
            self.configs[role] = min(timings, key=timings.get)
            self.timings[role] = timings
        self.x.zero_(), self.x2.zero_(), self.attn.zero_(), self.h.zero_()

    def _run(self) -> None:
        """One token: embedding row, the layers, final norm and LM head; then the position moves on."""
        import torch

        f = self.fused
        torch.index_select(self.embed, 0, self.token, out=self.x.view(1, -1))
        for i, layer in enumerate(self.layers):
            self._product("qkv", layer, self.configs["qkv"])
            _attention_split_kernel[(f.kv_heads, self.splits)](
                self.qkv, f.cos, f.sin, f.keys[i], f.values[i], self.position, self.part_out, self.part_stats,
                f.scaling, HEADS=f.heads, KV_HEADS=f.kv_heads, GROUP=self.group, GROUP_PAD=GROUP_PAD,
                DIM=f.head_dim, CACHE=f.max_cache_len, BLOCK=ATTENTION_BLOCK, SPLITS=self.splits,
                EXACT=self.exact, num_warps=4)
            _attention_combine_kernel[(f.heads,)](
                self.part_out, self.part_stats, self.position, self.attn, DIM=f.head_dim, BLOCK=ATTENTION_BLOCK,
                SPLITS=self.splits, SPLITS_PAD=max(2, triton.next_power_of_2(self.splits)), num_warps=4)
            for role in ("o", "gate_up", "down"):
                self._product(role, layer, self.configs[role])
        self._product("head", None, self.configs["head"])
        self.position += 1

    def _capture(self) -> None:
        import torch

        # Warm up on a side stream (Triton compiles on first launch, which a capture must not see), then capture.
        # The warm-up writes a key/value at position 0; every reply's prefill overwrites it.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    def prefill(self, ids: list[int]):
        """The prompt through the fused eager pass (cache positions 0..n-1); the last position's logits."""
        import torch

        logits = self.fused.prefill(torch.tensor([ids], device=self.device))
        self.position.fill_(len(ids))
        return logits

    def step(self, token):
        """Append `token` (a one-element tensor) at the current position; the logits [1, vocab] that follow it."""
        self.token.copy_(token.view(1))
        if self.graph is None:
            self._run()
        else:
            self.graph.replay()
        return self.logits
