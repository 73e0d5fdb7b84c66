"""Serve's batch on a GPU: a fixed number of rows (slots), each at its own position, one compiled step for all.

batch.py's rows run the model's own forward, whose launches from Python cost a 7B model's step more time on a GPU
than reading its weights does. Here a Llama-family model (engines/cuda_graph.FusedStep's maths: fused q/k/v and
gate/up, grouped-query attention reading each cached head once) keeps a static KV cache per slot; a reply joins by
prefilling its slot (eagerly: the prompt has its own length) and every step runs all slots through one
torch.compile'd graph, replayed as a CUDA graph, whatever rows are live (an idle slot computes and is ignored). No
padding, no cache copies when rows join or leave. `Slots` offers the calls live.py makes on batch.py's Batch.

Each slot attends to its own positions only (`attention="triton"`, the default where it fits):
engines/triton_step.slot_attention, split over 64-position blocks of each slot's cache, whose programs past a slot's
position exit without reading (an idle slot reads one position). It matches SDPA under Triton's interpreter
(tests/decode/test_tritondecode.py) and on a GPU (tests/test_gpu.py). `attention="sdpa"` is SDPA with a mask, which
reads all max_len positions of every slot at every step, however short the replies (at 8 slots of a 7B model,
8 x 32 layers x 2,048 positions of keys and values): the CPU's, and head shapes the Triton tiles do not take.

    slots = Slots(model, rows=8, max_len=2048)      # live.py builds it for a fusable model on a CUDA device
    Slots(model, rows=8, attention="sdpa")           # every position, masked (benchmarks/gpu_slots.py compares)
"""

import os

from talkalike.decode.batch import Rows, _pad_seen
from talkalike.decode.engines import apply_rope
from talkalike.decode.engines.cuda_graph import FusedStep

MAX_LEN = 2048  # positions per slot: the default 1,024-token context and serve's longest reply (max_tokens 1,024)
# What Slots attends with when not told: each slot's own positions where slot_attention fits (CUDA, a head shape its
# tiles take), else masked SDPA. On an H200, 8 streams of a 7B model: 4.27x one stream's tokens/s with Triton, 3.04x
# with SDPA in the same run (BENCHMARKS.md, "Several people at once"). benchmarks/serve_concurrency.py sets it.
ATTENTION = "triton"


class Slots:
    """Prefill, merge, drop, step and the logits over `rows` static slots; eager (any device) or compiled."""

    mergeable = True  # rows join whenever a slot is free

    def __init__(self, model, rows: int, max_len: int = MAX_LEN, compile: bool = True, attention: str | None = None):
        """`attention`: "sdpa" (every position, masked) or "triton" (each slot's own positions; CUDA, or the CPU under
        TRITON_INTERPRET=1, for a head shape that fits its tiles); ATTENTION when not given."""
        import torch

        self.fused = FusedStep(model, max_len)  # the fused weights, the RoPE table, the layer maths
        self.model, self.rows, self.max_len = model, rows, max_len
        self.device = self.fused.cos.device
        self.attention = attention or (ATTENTION if ATTENTION == "sdpa" or self._triton_fits() else "sdpa")
        assert self.attention in ("triton", "sdpa"), f"unknown attention {self.attention!r}"
        assert self.attention == "sdpa" or self._triton_fits(), "slot_attention needs CUDA (or Triton's interpreter)"
        if self.attention == "triton":
            # Imported here: triton is heavy, and tests load it under its interpreter (tests/decode/test_tritondecode.py)
            from talkalike.decode.engines.triton_step import slot_attention

            self._slot_attention = slot_attention
        weight = self.fused.qkv[0]
        shape = (rows, self.fused.kv_heads, max_len, self.fused.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=weight.dtype) for _ in self.fused.layers]
        self.values = [torch.zeros(shape, device=self.device, dtype=weight.dtype) for _ in self.fused.layers]
        self.free = list(range(rows))
        self.position = [0] * rows  # each slot's next position (host side: rows join and leave between steps)
        self.slot_ids = torch.arange(rows, device=self.device)
        self._step = self.step_all
        if compile and self.device.type == "cuda":
            for tensor in [*self.keys, *self.values, self.slot_ids]:
                torch._dynamo.mark_static_address(tensor)
            # CUDA graphs without inductor's graph trees: those are thread-local, and serve's batch is stepped by
            # whichever worker thread holds it (on the H200 the tree asserted `_is_key_in_tls` in a second thread).
            self._step = torch.compile(self.step_all, fullgraph=True, dynamic=False,
                                       options={"triton.cudagraphs": True, "triton.cudagraph_trees": False})

    def _triton_fits(self) -> bool:
        """Whether slot_attention runs here (CUDA, or Triton's interpreter) and takes this head shape."""
        if self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return False
        from talkalike.decode.engines.triton_step import head_fits

        return head_fits(self.fused.heads, self.fused.kv_heads, self.fused.head_dim)

    # --- what live.py calls, as on batch.Batch -----------------------------------------------------------------------

    def prefill(self, ids: list, prompts: list[list[int]]) -> Rows:
        """Each prompt into a free slot; Rows whose `cache` is the slot of each row and `hidden` its next logits."""
        import torch

        assert len(prompts) <= len(self.free), "more rows than slots"
        slots, logits = [], []
        for prompt in prompts:
            slot = self.free.pop(0)
            slots.append(slot)
            logits.append(self.prefill_slot(slot, torch.tensor([prompt], device=self.device)))
            self.position[slot] = len(prompt)
        width = max(len(p) for p in prompts)
        seen = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=self.device)
        return Rows(ids, slots, None, None, seen, torch.cat(logits), [[] for _ in ids], [False] * len(ids))

    def merge(self, rows: Rows | None, new: Rows) -> Rows:
        import torch

        if rows is None:
            return new
        width = max(rows.seen.shape[1], new.seen.shape[1])
        return Rows(rows.ids + new.ids, rows.cache + new.cache, None, None,
                    torch.cat([_pad_seen(rows.seen, width), _pad_seen(new.seen, width)]),
                    torch.cat([rows.hidden, new.hidden]), rows.tokens + new.tokens, rows.done + new.done)

    def drop_finished(self, rows: Rows) -> Rows | None:
        """The rows still decoding (None if none); the finished ones' slots are free again."""
        keep = [k for k, done in enumerate(rows.done) if not done]
        self.free += [slot for slot, done in zip(rows.cache, rows.done, strict=True) if done]
        if not keep:
            return None
        return Rows([rows.ids[k] for k in keep], [rows.cache[k] for k in keep], None, None, rows.seen[keep],
                    rows.hidden[keep], [rows.tokens[k] for k in keep], [False] * len(keep))

    def logits(self, rows: Rows):
        return rows.hidden

    def step(self, rows: Rows) -> None:
        """Feed each row its last token: one run of the whole slot table; each row keeps its slot's logits."""
        import torch

        # Slots not stepped now (free, or another batch's) write their key and value at the last position, which no
        # row ever reaches or sees (rows hold at most max_len - 2 positions).
        tokens, positions = [0] * self.rows, [self.max_len - 1] * self.rows
        for slot, generated in zip(rows.cache, rows.tokens, strict=True):
            tokens[slot], positions[slot] = generated[-1], self.position[slot]
            self.position[slot] += 1
        # Every copy from the host comes before the replay, while the device is idle (the worker has just read the
        # drawn tokens back): after it is queued nothing waits, so the next step's samplers queue behind it.
        fed = torch.tensor([tokens[s] for s in rows.cache], device=self.device)
        rows.seen = torch.cat([rows.seen, fed[:, None]], dim=1)
        table = torch.tensor([tokens, positions], device=self.device)
        index = torch.tensor(rows.cache, device=self.device)
        if self._step is not self.step_all:
            torch.compiler.cudagraph_mark_step_begin()
        # A replay's output lives in a buffer the next one overwrites: keep this step's rows apart.
        rows.hidden = self._step(table[0], table[1])[index].clone()

    # --- the maths --------------------------------------------------------------------------------------------------

    def prefill_slot(self, slot: int, ids):
        """FusedStep.prefill into slot `slot`'s cache: the prompt `ids` [1, n] causally; its last logits [1, vocab]."""
        n = ids.shape[1]

        def store(i, k, v):
            self.keys[i][slot, :, :n] = k[0]
            self.values[i][slot, :, :n] = v[0]

        return self.fused.prefill(ids, store)

    def step_all(self, tokens, positions):
        """Every slot's token [rows] at its position [rows]: write their keys and values, return logits [rows, vocab].
        FusedStep.step with a row per slot, each attending to its own cache up to its own position (an idle slot, at
        max_len - 1, sees that position alone under slot_attention: its row is finite and ignored)."""
        import torch.nn.functional as F

        f = self.fused
        rows, group, d = self.rows, f.heads // f.kv_heads, f.head_dim
        cos, sin = f.cos[positions][:, None, None, :], f.sin[positions][:, None, None, :]
        if self.attention == "sdpa":
            visible = (f.positions[None, :] <= positions[:, None]).view(rows, 1, 1, -1)
        x = self.model.model.embed_tokens(tokens[:, None])
        q_size, kv_size = f.heads * d, f.kv_heads * d
        for i, layer in enumerate(f.layers):
            out = f._linear(layer.input_layernorm(x), f.qkv[i], f.qkv_bias[i])
            q = out[..., :q_size].view(rows, 1, f.heads, d)
            k = out[..., q_size: q_size + kv_size].view(rows, 1, f.kv_heads, d)
            v = out[..., q_size + kv_size:].view(rows, 1, f.kv_heads, d)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.keys[i][self.slot_ids, :, positions] = k[:, 0]
            self.values[i][self.slot_ids, :, positions] = v[:, 0]
            if self.attention == "triton":
                attended = self._slot_attention(q.view(rows, f.heads, d), self.keys[i], self.values[i], positions,
                                                f.scaling)
            else:
                attended = F.scaled_dot_product_attention(q.view(rows, f.kv_heads, group, d), self.keys[i],
                                                          self.values[i], attn_mask=visible, scale=f.scaling)
            o_proj = layer.self_attn.o_proj
            x = x + f._linear(attended.reshape(rows, 1, -1), o_proj.weight, o_proj.bias)
            x = f._mlp(i, x)
        return f._logits(x)
