"""Write a merged Hugging Face causal LM as a GGUF file that llama.cpp-based runners (llama.cpp, Ollama, LM Studio) load.

Used by `talkalike export RUN --format gguf|ollama` (export/merged.py), which merges the adapter first and checks the
file afterwards. Tensor names come from the `gguf` package's own map (gguf.get_tensor_name_map), metadata keys from
its GGUFWriter; what is ours is what llama.cpp's converter does to the values:

- Gemma 3: its RMSNorm multiplies by (1 + w), llama.cpp by w, so every norm weight is stored as 1 + w.
- Llama / Mistral: llama.cpp rotates interleaved pairs where transformers rotates halves, so the q and k projections
  are permuted the way llama.cpp's converter does.
- 1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them.

A model whose config llama.cpp would run differently (Gemma 3 settings that GGUF cannot express) is refused with a
clear error instead of producing a file that quietly misbehaves.

    from talkalike.export.gguf import write_gguf
    write_gguf(merged_model, tokenizer, chat_template, Path("model.gguf"), "f16", name="dana")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from talkalike.errors import TalkalikeError

# transformers model_type -> (gguf architecture name, whether llama.cpp's rope layout needs the q/k permutation)
ARCHS = {
    "gemma3_text": ("gemma3", False),
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp runs Mistral 7B as the llama architecture
}

# Tensor types a user can ask for; 1-D tensors are always float32.
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_GGUF_TYPE = "f16"  # lossless enough for a chat twin (max relative error 2^-11) at half the size of f32

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
EMBEDDING_ROWS_AT_ONCE = 16_384  # the read-back compares the token embeddings in slices of this many rows


@dataclass(frozen=True)
class GGUFSummary:
    """What was written: enough to check the file when it is read back."""

    path: Path
    architecture: str
    tensors: dict  # gguf name -> shape as numpy saw it (row-major)
    tensor_types: dict  # gguf name -> GGMLQuantizationType name
    vocab_size: int
    metadata: dict  # the scalar hyper-parameters written, by key
    rounding: dict  # transformers parameter name -> GGMLQuantizationType name it was stored as


def architecture_of(config) -> tuple[str, bool]:
    """(gguf architecture, permute q/k) for a transformers config; a clear error for one we cannot export."""
    if config.model_type not in ARCHS:
        known = ", ".join(sorted(ARCHS))
        raise TalkalikeError(
            f"GGUF export supports the model types {known}; this run's base is {config.model_type!r}. "
            "Use `--format merged` and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    return ARCHS[config.model_type]


def llama_cpp_mismatches(config) -> list[str]:
    """Settings of this config that llama.cpp's runtime would not honour (it hard-codes them per architecture)."""
    arch, _ = architecture_of(config)
    problems = []
    if arch == "gemma3":
        head_dim = config.head_dim
        # llama.cpp scales attention by 1/sqrt(head_dim), except for the 62-layer 27B (hidden/heads).
        expected_scalar = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
        if config.query_pre_attn_scalar != expected_scalar:
            problems.append(f"query_pre_attn_scalar={config.query_pre_attn_scalar} (llama.cpp uses {expected_scalar})")
        # llama.cpp fixes the pattern: every 6th layer attends globally, the others within the sliding window.
        expected_layers = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                           for i in range(config.num_hidden_layers)]
        if list(config.layer_types) != expected_layers:
            problems.append("layer_types differ from llama.cpp's fixed 5 sliding : 1 global pattern")
        if config.num_hidden_layers < 6:
            # Seen with llama.cpp (b6xxx, llama-cpp-python 0.3.16): a model with no global layer crashes on decode.
            problems.append(f"{config.num_hidden_layers} layers, so no global-attention layer (llama.cpp needs one)")
        local = config.rope_parameters.get("sliding_attention", {})
        if local.get("rope_theta", 10000.0) != 10000.0 or local.get("rope_type", "default") != "default":
            problems.append(f"sliding-window rope {local} (llama.cpp uses theta 10000, no scaling)")
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(config, name, None):
                problems.append(f"{name}={getattr(config, name)} (llama.cpp's gemma3 has none)")
        if config.hidden_activation != "gelu_pytorch_tanh":
            problems.append(f"hidden_activation={config.hidden_activation} (llama.cpp uses tanh-approximated GELU)")
    else:
        if getattr(config, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={config.hidden_act} (llama.cpp's llama uses SiLU)")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            problems.append("attention or MLP biases (llama.cpp's llama has none)")
    return problems


def _rope_params(config) -> dict:
    """The global-attention rope parameters, in transformers 5's `rope_parameters` layout or the older one."""
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("full_attention", params)


def _permute(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's q/k row order: rotary pairs interleaved per head instead of split into halves."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape))


def _hyperparameters(writer, config, arch: str, context_length: int) -> dict:
    """Write the architecture's hyper-parameters; returns them by key for the read-back check."""
    rope = _rope_params(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    values = {
        "context_length": context_length,
        "embedding_length": config.hidden_size,
        "block_count": config.num_hidden_layers,
        "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads,
        "attention.head_count_kv": config.num_key_value_heads,
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "attention.key_length": head_dim,
        "attention.value_length": head_dim,
        "rope.freq_base": float(rope.get("rope_theta", 10000.0)),
    }
    if arch == "gemma3":
        values["attention.sliding_window"] = config.sliding_window
    else:
        values["rope.dimension_count"] = head_dim
    for key, value in values.items():  # what GGUFWriter's add_context_length etc. write: floats as f32, counts as u32
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{arch}.{key}", value)
    if rope.get("rope_type", "default") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope.get("rope_type", "default") != "default":
        raise TalkalikeError(f"rope scaling {rope.get('rope_type')!r} is not supported by the GGUF export yet")
    return values


def _tokenizer_spec(tokenizer) -> dict:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _walk(node):
    """Every component of a tokenizer.json normalizer / pre-tokenizer (they nest in Sequences)."""
    if not node:
        return
    yield node
    for key in ("normalizers", "pretokenizers"):
        for child in node.get(key) or ():
            yield from _walk(child)


def _bpe_style(spec: dict) -> str:
    """'gpt2' for byte-level BPE, 'llama' for SentencePiece-style BPE (▁ for spaces, byte fallback)."""
    if spec["model"]["type"] != "BPE":
        raise TalkalikeError(f"GGUF export handles BPE tokenizers; this one is {spec['model']['type']}")
    parts = list(_walk(spec.get("pre_tokenizer"))) + list(_walk(spec.get("normalizer")))
    if any(part.get("type") == "ByteLevel" for part in parts) or (spec.get("decoder") or {}).get("type") == "ByteLevel":
        return "gpt2"
    if spec["model"].get("byte_fallback") or any(part.get("type") in ("Metaspace", "Replace") for part in parts):
        return "llama"
    raise TalkalikeError("cannot tell whether this BPE tokenizer is byte-level or SentencePiece-style")


def _pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for a byte-level tokenizer's split rule ('gpt-2' for GPT-2's own regex)."""
    parts = list(_walk(spec.get("pre_tokenizer")))
    splits = [part for part in parts if part.get("type") == "Split"]
    if not splits:
        byte_level = [part for part in parts if part.get("type") == "ByteLevel"]
        if byte_level and byte_level[0].get("use_regex", True):
            return "gpt-2"
        raise TalkalikeError("this byte-level tokenizer splits text in a way llama.cpp has no name for")
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pattern = splits[0].get("pattern", {}).get("Regex")
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if regex == pattern:
            return name
    raise TalkalikeError("this tokenizer's pre-tokenizer regex is not one llama.cpp knows; export --format merged")


def _adds_token(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether encoding plain text adds this special token at the start (first) or end."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and (ids[0] if first else ids[-1]) == token_id


def vocab_from_tokenizer(tokenizer, rows: int) -> dict:
    """GGUF tokenizer metadata (tokenizer.ggml.*) derived from a fast tokenizer, padded to the embedding's rows."""
    import gguf

    spec = _tokenizer_spec(tokenizer)
    style = _bpe_style(spec)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    beyond = [by_id[i] for i in by_id if i >= rows]
    if any(not added.get(i) or not added[i].special for i in by_id if i >= rows):
        raise TalkalikeError(f"the tokenizer has tokens past the model's {rows} embedding rows: {beyond[:5]}")
    tokens, scores, types = [], [], []
    for index in range(rows):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")  # llama.cpp's own filler for rows the tokenizer never produces
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            scores.append(-1000.0)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        elif style == "llama" and _BYTE_TOKEN.match(token):
            tokens.append(token)
            scores.append(0.0)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token)
            # SentencePiece BPE scores rank pieces by merge priority, which is vocabulary order; llama.cpp's
            # tokenizer merges the highest score first, so -id reproduces the same merges.
            scores.append(-float(index) if style == "llama" else 0.0)
            types.append(gguf.TokenType.NORMAL)
    vocab = {
        "model": style,
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "unknown_token_id": tokenizer.unk_token_id,
        "padding_token_id": tokenizer.pad_token_id,
        "add_bos_token": _adds_token(tokenizer, tokenizer.bos_token_id, first=True),
        "add_eos_token": _adds_token(tokenizer, tokenizer.eos_token_id, first=False),
    }
    if style == "gpt2":
        vocab["pre"] = _pre_tokenizer_name(spec)
        vocab["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    else:
        vocab["pre"] = "default"
        parts = list(_walk(spec.get("pre_tokenizer"))) + list(_walk(spec.get("normalizer")))
        vocab["add_space_prefix"] = any(
            part.get("type") == "Prepend"
            or (part.get("type") == "Metaspace" and part.get("prepend_scheme", "always") != "never")
            for part in parts
        )
    return vocab


def vocab_from_gguf(path: Path) -> dict:
    """The tokenizer metadata of an existing GGUF (the embedded model's, as llama.cpp's own converter wrote it)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {key.removeprefix("tokenizer.ggml."): field.contents() for key, field in reader.fields.items()
            if key.startswith("tokenizer.ggml.")}


def _write_vocab(writer, vocab: dict, chat_template: str) -> None:
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab.get("pre", "default"))
    writer.add_token_list(vocab["tokens"])
    writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["token_type"])
    if vocab.get("merges"):
        writer.add_token_merges(vocab["merges"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unknown_token_id", writer.add_unk_token_id), ("padding_token_id", writer.add_pad_token_id)):
        if vocab.get(key) is not None:
            add(int(vocab[key]))
    writer.add_add_bos_token(bool(vocab.get("add_bos_token", False)))
    writer.add_add_eos_token(bool(vocab.get("add_eos_token", False)))
    if "add_space_prefix" in vocab:
        writer.add_add_space_prefix(bool(vocab["add_space_prefix"]))
    writer.add_chat_template(chat_template)


def gguf_tensors(model, arch: str, permute_qk: bool, kind: str):
    """(transformers name, gguf name, numpy array, ggml type) for every weight llama.cpp needs, values transformed as
    it expects."""
    import gguf
    import numpy as np

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TalkalikeError(f"no GGUF name for tensor {hf_name}; this model layout is not exportable yet")
        data = tensor.detach().to("cpu").float().numpy()
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm computes x * (1 + w); llama.cpp computes x * w
        if permute_qk and hf_name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_attention_heads)
        elif permute_qk and hf_name.endswith("k_proj.weight"):
            data = _permute(data, config.num_attention_heads, config.num_key_value_heads)
        # llama.cpp keeps 1-D tensors in float32; q8_0 needs rows that are a multiple of its 32-value blocks.
        target = "f32" if data.ndim == 1 else kind
        if target == "q8_0" and data.shape[-1] % 32:
            target = "f16"
        yield hf_name, name, np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType[target.upper()]


def write_gguf(model, tokenizer, chat_template: str, path: Path, kind: str = DEFAULT_GGUF_TYPE, *, name: str,
               vocab: dict | None = None, context_length: int | None = None) -> GGUFSummary:
    """Write `model` (merged, any float dtype) and its tokenizer to `path` as GGUF; `vocab` overrides the derived one."""
    import gguf

    if kind not in GGUF_TYPES:
        raise TalkalikeError(f"unknown GGUF type {kind!r}; choose one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch, permute_qk = architecture_of(config)
    problems = llama_cpp_mismatches(config)
    if problems:
        raise TalkalikeError("llama.cpp would run this model differently from transformers: "
                             + "; ".join(problems) + ". Export it with --format merged instead.")
    rows = model.get_input_embeddings().weight.shape[0]
    vocab = vocab or vocab_from_tokenizer(tokenizer, rows)
    if len(vocab["tokens"]) != rows:
        raise TalkalikeError(f"the vocabulary has {len(vocab['tokens'])} tokens but the model {rows} embedding rows")
    # use_temp_file: each tensor goes to a spooled temporary file as it is converted (at most 256 MB of it in memory)
    # instead of every converted tensor waiting in memory for the header, which is written first.
    writer = gguf.GGUFWriter(str(path), arch, use_temp_file=True)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType["ALL_F32" if kind == "f32" else f"MOSTLY_{kind.upper()}"])
    if kind == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    metadata = _hyperparameters(writer, config, arch, context_length or config.max_position_embeddings)
    _write_vocab(writer, vocab, chat_template)
    shapes, types, rounding = {}, {}, {}
    for hf_name, tensor_name, data, ggml_type in gguf_tensors(model, arch, permute_qk, kind):
        shapes[tensor_name] = tuple(data.shape)
        types[tensor_name] = rounding[hf_name] = ggml_type.name
        if ggml_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, data)
        elif ggml_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, data.astype("float16"))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data, ggml_type), raw_dtype=ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFSummary(path=path, architecture=arch, tensors=shapes, tensor_types=types, vocab_size=rows,
                       metadata=metadata, rounding=rounding)


def round_like_gguf(model, rounding: dict) -> None:
    """Pass `model`'s weights, in place, through the rounding each got in the GGUF (f16, bf16 or q8_0 and back)."""
    import gguf
    import torch

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            kind = rounding.get(name)
            if kind is None or kind == "F32":
                continue
            ggml_type = gguf.GGMLQuantizationType[kind]
            values = tensor.detach().to("cpu").float().numpy()
            back = gguf.quants.dequantize(gguf.quants.quantize(values, ggml_type), ggml_type).reshape(values.shape)
            tensor.copy_(torch.from_numpy(back).to(tensor.dtype))


def _field(reader, key: str):
    field = reader.get_field(key)
    if field is None:
        raise TalkalikeError(f"the written GGUF lacks {key}")
    return field.contents()


def check_gguf(summary: GGUFSummary, embeddings, chat_template: str) -> dict:
    """Read the file back: tensor names, shapes and types, metadata, and token embeddings equal to the model's."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(summary.path))
    arch = summary.architecture
    found = {tensor.name: tensor for tensor in reader.tensors}
    if set(found) != set(summary.tensors):
        missing, extra = set(summary.tensors) - set(found), set(found) - set(summary.tensors)
        raise TalkalikeError(f"GGUF read-back: tensors missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for name, shape in summary.tensors.items():
        tensor = found[name]
        # GGUF lists dimensions fastest-first: the reverse of numpy's row-major shape.
        if tuple(int(d) for d in reversed(tensor.shape.tolist())) != shape:
            raise TalkalikeError(f"GGUF read-back: {name} has shape {tensor.shape.tolist()}, expected {shape}")
        if tensor.tensor_type.name != summary.tensor_types[name]:
            raise TalkalikeError(f"GGUF read-back: {name} is {tensor.tensor_type.name}, not {summary.tensor_types[name]}")
    if _field(reader, "general.architecture") != arch:
        raise TalkalikeError("GGUF read-back: wrong general.architecture")
    for key, value in summary.metadata.items():
        stored = _field(reader, f"{arch}.{key}")
        if not np.isclose(float(stored), float(value), rtol=1e-6):
            raise TalkalikeError(f"GGUF read-back: {arch}.{key} is {stored}, expected {value}")
    if len(_field(reader, "tokenizer.ggml.tokens")) != summary.vocab_size:
        raise TalkalikeError("GGUF read-back: the token list does not match the embedding rows")
    if _field(reader, "tokenizer.chat_template") != chat_template:
        raise TalkalikeError("GGUF read-back: the chat template differs from the run's")
    embd = found["token_embd.weight"]
    rows, width = summary.tensors["token_embd.weight"]
    expected = embeddings.detach().to("cpu")
    # Worst rounding each type allows, relative to the largest weight: f16 and bf16 keep 11 and 8 mantissa bits;
    # q8_0 stores each block of 32 as int8 steps of (block max / 127).
    tolerance = {"F32": 0.0, "F16": 2.0 ** -11, "BF16": 2.0 ** -8, "Q8_0": 1.0 / 127}[embd.tensor_type.name]
    error = scale = 0.0
    for start in range(0, rows, EMBEDDING_ROWS_AT_ONCE):  # a whole f32 copy of a 262k-token embedding is 671 MB
        stop = min(start + EMBEDDING_ROWS_AT_ONCE, rows)
        values = gguf.quants.dequantize(embd.data[start:stop], embd.tensor_type).reshape(stop - start, width)
        part = expected[start:stop].float().numpy()
        error = max(error, float(np.abs(values - part).max()))
        scale = max(scale, float(np.abs(part).max()))
    scale = scale or 1.0
    if error > tolerance * scale * 1.01 + 1e-12:
        raise TalkalikeError(f"GGUF read-back: token embeddings differ by {error:.3g} (allowed {tolerance * scale:.3g})")
    return {"tensors": len(found), "embedding_max_error": error, "type": embd.tensor_type.name}
