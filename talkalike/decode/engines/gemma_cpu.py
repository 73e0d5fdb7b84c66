"""The CPU chat's engine: a run's adapter merged once, memory-mapped, and decoded without transformers or peft.

For a run over a Gemma 3 text model on a CPU, the adapter is merged into the weights it touches once and the result
cached in RUN/merged-cpu/ (rebuilt whenever the adapter, the base or the dtype changes). Later starts map that file
and the base's safetensors straight into memory (no copy, no weight initialisation) and decode with this module's
forward pass, which computes what transformers' Gemma3ForCausalLM computes (tests/decode/test_engines.py).

    gemma = load_merged(run_dir, home)            # builds RUN/merged-cpu/ on first use (needs peft once)
    engine = GemmaEngine(gemma, max_len=1024)
"""

import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from talkalike.decode.engines import apply_rope
from talkalike.errors import TalkalikeError
from talkalike.run import Run

CACHE_DIR = "merged-cpu"
FORMAT = 1  # bump when the cached layout changes, so old caches are rebuilt rather than misread
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# A layer's RMS norms: this module's name -> the transformers module's
NORMS = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
         "pre_ff_norm": "pre_feedforward_layernorm", "post_ff_norm": "post_feedforward_layernorm",
         "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}


def supported(config: dict) -> bool:
    """Whether this module's forward pass computes what transformers does for a model with this config.json."""
    rope = config.get("rope_parameters") or {}
    return (config.get("model_type") == "gemma3_text"
            and config.get("attn_logit_softcapping") is None
            and not config.get("use_bidirectional_attention")
            and config.get("hidden_activation") == "gelu_pytorch_tanh"
            and set(config.get("layer_types", [])) <= {"sliding_attention", "full_attention"}
            and all((rope.get(t) or {}).get("rope_type") == "default" for t in set(config.get("layer_types", []))))


def map_safetensors(path: Path) -> dict:
    """Every tensor of a safetensors file as a read-only view of a private memory map: no copy, no allocation."""
    import torch

    with open(path, "rb") as handle:
        # MAP_POPULATE maps the (page-cached) file in one go instead of one fault per 4 KiB page in the first forward.
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    size = int.from_bytes(mapped[:8], "little")
    header = json.loads(mapped[8: 8 + size])
    tensors = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "buffer is not writable": the weights are only ever read
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = getattr(torch, _DTYPES[meta["dtype"]])
            start, end = meta["data_offsets"]
            count = (end - start) // dtype.itemsize
            flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + size + start) if count else \
                torch.empty(0, dtype=dtype)
            tensors[name] = flat.view(meta["shape"])
    return tensors


def _rope(theta: float, dim: int, positions: int):
    """cos and sin tables [positions, dim] as transformers' default RoPE computes them (fp32)."""
    import torch

    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.arange(positions).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def fits(twin, max_len: int) -> bool:
    """A twin whose model is this module's merged Gemma (Twin.merged)."""
    return isinstance(twin.model, Gemma)


def build(twin, max_len: int) -> "GemmaEngine":
    return GemmaEngine(twin.model, max_len)


class GemmaEngine:
    """One conversation over a Gemma's weights, its KV cache allocated once for `max_len` positions."""

    def __init__(self, gemma: "Gemma", max_len: int):
        import torch

        self.gemma, self.max_len, self.device = gemma, max_len, torch.device("cpu")
        self.cache = gemma.new_cache(max_len)
        self.position = 0

    def prefill(self, ids: list[int]):
        import torch

        self.position = len(ids)
        return self.gemma.forward(torch.tensor(ids), 0, self.cache)

    def step(self, token):
        logits = self.gemma.forward(token.view(1), self.position, self.cache)
        self.position += 1
        return logits


class Gemma:
    """Gemma 3 text's forward pass over weights given as tensors (e.g. memory-mapped).

    Per layer: q/k/v as one fused matrix and gate/up as another (one matrix-vector product each per token), RMS
    norms with (1 + weight) precomputed, a preallocated KV cache, and sliding-window layers reading only the last
    `sliding_window` keys.
    """

    def __init__(self, config: dict, weights: dict):
        import torch

        self.cfg = config
        self.dtype = weights["embed"].dtype
        self.heads, self.kv_heads, self.head_dim = (config["num_attention_heads"], config["num_key_value_heads"],
                                                   config["head_dim"])
        self.window = config["sliding_window"]
        self.eps = config["rms_norm_eps"]
        self.scaling = config["query_pre_attn_scalar"] ** -0.5
        self.softcap = config.get("final_logit_softcapping")
        self.embed = weights["embed"]
        self.lm_head = weights.get("lm_head", self.embed)
        # transformers scales the embedding by sqrt(hidden) in fp32 and casts the factor to the weight dtype
        self.embed_scale = torch.tensor(config["hidden_size"] ** 0.5).to(self.dtype)
        self.norm = (1.0 + weights["norm"].float())
        self.layers = []
        for i, kind in enumerate(config["layer_types"]):
            w = {name: weights[f"layers.{i}.{name}"] for name in ("qkv", "o", "gate_up", "down")}
            w |= {name: 1.0 + weights[f"layers.{i}.{name}"].float() for name in NORMS}
            w["sliding"] = kind == "sliding_attention"
            w["theta"] = config["rope_parameters"][kind]["rope_theta"]
            self.layers.append(w)
        self._rope: dict[float, tuple] = {}

    def _rms(self, x, weight):
        import torch.nn.functional as F

        # Gemma3RMSNorm's arithmetic: normalise in fp32, scale by (1 + w), cast back; torch's fused rms_norm gives
        # the same fp32 result as transformers' four separate ops in a third less time (108 norms per token).
        return F.rms_norm(x.float(), (x.shape[-1],), weight, self.eps).to(x.dtype)

    def _tables(self, theta: float, length: int):
        cached = self._rope.get(theta)
        if cached is None or cached[0].shape[0] < length:
            cos, sin = _rope(theta, self.head_dim, max(length, 1024))
            cached = self._rope[theta] = (cos.to(self.dtype), sin.to(self.dtype))
        return cached

    def forward(self, ids, start: int, cache: list):
        """Logits [1, vocab] of the last of `ids` (1-D), which sit at positions start.. ; fills `cache` in place."""
        import torch
        import torch.nn.functional as F

        length = ids.shape[0]
        end = start + length
        x = F.embedding(ids, self.embed) * self.embed_scale
        mask = None
        if length > 1:  # prefill: causal, and within the window for sliding layers
            q_pos = torch.arange(start, end)[:, None]
            k_pos = torch.arange(end)[None, :]
            causal = k_pos <= q_pos
            mask = {False: causal, True: causal & (k_pos > q_pos - self.window)}
        for w, (k_cache, v_cache) in zip(self.layers, cache, strict=True):
            cos, sin = self._tables(w["theta"], end)
            cos, sin = cos[start:end], sin[start:end]
            h = self._rms(x, w["input_norm"])
            q, k, v = F.linear(h, w["qkv"]).split(
                [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
            q = self._rms(q.view(length, self.heads, self.head_dim).transpose(0, 1), w["q_norm"])
            k = self._rms(k.view(length, self.kv_heads, self.head_dim).transpose(0, 1), w["k_norm"])
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k_cache[:, start:end] = k
            v_cache[:, start:end] = v.view(length, self.kv_heads, self.head_dim).transpose(0, 1)
            first = max(0, end - self.window) if (w["sliding"] and length == 1) else 0
            attn = F.scaled_dot_product_attention(
                q[None], k_cache[None, :, first:end], v_cache[None, :, first:end],
                attn_mask=None if mask is None else mask[w["sliding"]], scale=self.scaling,
                enable_gqa=self.heads != self.kv_heads)
            attn = attn[0].transpose(0, 1).reshape(length, self.heads * self.head_dim)
            x = x + self._rms(F.linear(attn, w["o"]), w["post_attn_norm"])
            h = self._rms(x, w["pre_ff_norm"])
            gate, up = F.linear(h, w["gate_up"]).chunk(2, dim=-1)
            h = F.linear(F.gelu(gate, approximate="tanh") * up, w["down"])
            x = x + self._rms(h, w["post_ff_norm"])
        logits = F.linear(self._rms(x[-1:], self.norm), self.lm_head)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def new_cache(self, length: int) -> list:
        """An empty KV cache for `length` positions."""
        import torch

        shape = (self.kv_heads, length, self.head_dim)
        return [(torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)) for _ in self.layers]


def layer_tensors(state: dict, config: dict, prefix: str = "model.") -> dict:
    """This module's tensor names from a Gemma3ForCausalLM state dict (fused q/k/v and gate/up), embedding aside."""
    import torch

    out = {"norm": state[f"{prefix}norm.weight"]}
    for i in range(config["num_hidden_layers"]):
        p = f"{prefix}layers.{i}."
        out[f"layers.{i}.qkv"] = torch.cat([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[f"layers.{i}.o"] = state[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.gate_up"] = torch.cat([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]])
        out[f"layers.{i}.down"] = state[p + "mlp.down_proj.weight"]
        for ours, theirs in NORMS.items():
            out[f"layers.{i}.{ours}"] = state[p + theirs + ".weight"]
    return out


def _tensors(model) -> tuple[dict, dict]:
    """(config, this module's tensors) of a loaded Gemma3ForCausalLM: the fused layers, "embed", and "lm_head" when
    the head is not the embedding (an adapter on the LM head, as the original preset trains, unties it)."""
    import torch

    config = model.config.to_dict()
    if not supported(config):
        raise TalkalikeError(f"{config.get('model_type')} is not decoded by talkalike.decode.engines.gemma_cpu")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = layer_tensors(state, config)
    tensors["embed"] = state["model.embed_tokens.weight"]
    head = state.get("lm_head.weight", tensors["embed"])
    if not torch.equal(head, tensors["embed"]):
        tensors["lm_head"] = head
    return config, tensors


def from_model(model, dtype=None) -> "Gemma":
    """A Gemma over a loaded Gemma3ForCausalLM's weights (fused copies; for tests and benchmarks)."""
    config, tensors = _tensors(model)
    dtype = dtype or tensors["embed"].dtype
    return Gemma(config, {name: t.to(dtype).contiguous() for name, t in tensors.items()})


def fingerprint(run_dir: Path, run_info: dict, dtype_name: str, base_file: Path) -> str:
    """What the cached merge depends on: the adapter's bytes, the base (revision, and its weights file's size and
    modification time), the dtype and this format."""
    stat = base_file.stat() if base_file.is_file() else None
    digest = hashlib.sha256(f"{FORMAT}\n{dtype_name}\n{json.dumps(run_info.get('base'), sort_keys=True)}\n"
                            f"{stat and (stat.st_size, stat.st_mtime_ns)}\n".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = run_dir / "adapter" / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _base_file(home: Path, run_info: dict) -> Path:
    """The base model's single safetensors file (where the shared embedding is mapped from)."""
    from talkalike.model import resolve_base

    target, _ = resolve_base(run_info["base"]["id"], home)
    return Path(target) / "model.safetensors"


def build_merged(run_dir: Path, home: Path, dtype_name: str = "float32") -> Path:
    """Merge the run's adapter into the base once and write RUN/merged-cpu/ atomically; returns the folder."""
    import torch
    from safetensors.torch import save_file

    from talkalike.model import load_run

    run_dir = Path(run_dir)
    dtype = getattr(torch, dtype_name)
    print(f"merging {run_dir.name}'s adapter into the weights once (later starts map {CACHE_DIR}/ directly)",
          file=sys.stderr, flush=True)
    # Merge in fp32 onto the unquantized base (never into 4-bit weights), then cast once.
    model, _, run = load_run(run_dir, home, dtype=torch.float32, quantize=False)
    config, tensors = _tensors(model.merge_and_unload())
    base_path = _base_file(home, run.info)
    embed_key = _shared_embedding(base_path, tensors["embed"], dtype)
    if embed_key is not None:
        del tensors["embed"]  # mapped from the base's file at load
    tensors = {name: t.to(dtype).contiguous() for name, t in tensors.items()}
    folder = run_dir / CACHE_DIR
    work = Path(tempfile.mkdtemp(prefix=f".{CACHE_DIR}.tmp-", dir=run_dir))
    stale = work.with_name(work.name.replace(".tmp-", ".old-"))
    try:
        save_file(tensors, str(work / "model.safetensors"))
        meta = {"fingerprint": fingerprint(run_dir, run.info, dtype_name, base_path), "dtype": dtype_name,
                "embedding_from_base": embed_key, "config": config}
        (work / "cache.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if folder.exists():
            os.rename(folder, stale)
        os.rename(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def _shared_embedding(base_path: Path, embed, dtype) -> str | None:
    """The base file's embedding tensor name, if the merged embedding is that very tensor in the decode dtype."""
    import torch

    if not base_path.is_file():
        return None
    base = map_safetensors(base_path)
    for name in ("model.embed_tokens.weight", "embed_tokens.weight"):
        if name in base and base[name].dtype == dtype and base[name].shape == embed.shape \
                and torch.equal(base[name], embed.to(dtype)):
            return name
    return None


def load_merged(run_dir: Path, home: Path, dtype_name: str = "float32") -> "Gemma | None":
    """The run's merged decoder, building the cache when missing or stale; None if the base is not Gemma 3 text."""
    import fcntl

    run_dir = Path(run_dir)
    run_info = Run.open(run_dir).info
    base_path = _base_file(home, run_info)
    meta_path = run_dir / CACHE_DIR / "cache.json"

    def current() -> dict | None:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
        return meta if meta and meta.get("fingerprint") == fingerprint(run_dir, run_info, dtype_name, base_path) \
            else None

    meta = current()
    if meta is None:
        config_path = base_path.with_name("config.json")
        # A hub id not cached as a folder, or a config from before transformers 5's rope_parameters: the general path.
        if not config_path.is_file() or not supported(json.loads(config_path.read_text(encoding="utf-8"))):
            return None
        # One process merges; a second chat started meanwhile waits and then uses its result.
        with open(run_dir / f".{CACHE_DIR}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta = current()
            if meta is None:
                build_merged(run_dir, home, dtype_name)
                meta = current()
    tensors = map_safetensors(run_dir / CACHE_DIR / "model.safetensors")
    if meta["embedding_from_base"]:
        tensors["embed"] = map_safetensors(base_path)[meta["embedding_from_base"]]
    return Gemma(meta["config"], tensors)


def load_tokenizer(folder: Path):
    """A run's tokenizer, loaded the short way for Gemma's: transformers' GemmaTokenizer.from_pretrained parses the
    33 MB tokenizer.json in Python three times and rebuilds the BPE from it (about 2.7 s here); the tokenizers
    library reads the same file once in Rust (about 0.9 s). Same vocabulary, specials, template and padding side
    (tests/decode/test_generate_cpudecode.py compares them); other tokenizer classes load the usual way."""
    folder = Path(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if config.get("tokenizer_class") not in ("GemmaTokenizer", "GemmaTokenizerFast") or \
            not (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer  # its import alone indexes every model family (~0.7 s)

        return AutoTokenizer.from_pretrained(str(folder))
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    kwargs = {k: v for k, v in config.items() if k not in ("tokenizer_class", "auto_map", "chat_template")}
    template = folder / "chat_template.jinja"
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else config.get("chat_template")
    tokenizer = TokenizersBackend(tokenizer_file=str(folder / "tokenizer.json"), name_or_path=str(folder),
                                  chat_template=chat_template, **kwargs)
    tokenizer.padding_side = config.get("padding_side", "left")  # GemmaTokenizer's class default
    return tokenizer
