"""`talkalike plan`: parameters and peak memory of a training run, from the model's config alone.

    talkalike plan                                        # the embedded model with this machine's default preset
    talkalike plan --base yam-peleg/Hebrew-Mistral-7B --preset original --json

The model is built on the meta device (no weights are read or downloaded; a folder holding only config.json is
enough) and the recipe's LoRA is really applied to it, so the trainable count is PEFT's own. Memory is an estimate:
weights at their training precision, LoRA weights + gradients + optimizer states, activations for one micro-batch
(with or without gradient checkpointing) and the logits of the labelled positions.
"""

import json
import math
import os
from pathlib import Path

from talkalike.errors import TalkalikeError
from talkalike.files import say
from talkalike.train.recipe import Recipe, epochs_for, parse_memory_budget, resolve_recipe

NF4_BITS = 4.127  # NF4 with double quantization: 4 bits + 64-weight blocks of 8-bit scales, themselves quantized
PERSONA_SHARE = 0.5  # labelled share of tokens assumed for the LM head (persona-only loss; ~37% on the sample chat)
OVERHEAD_GB = {"cuda": 0.8, "cpu": 1.0}  # CUDA context and allocator slack / interpreter, torch and libraries
USABLE = 0.9  # share of the device's memory a run can count on


def load_config(base: str | None, home: Path | None):
    """The model config of a base, without its weights (the embedded model's comes from its converted folder)."""
    from transformers import AutoConfig

    from talkalike.model import from_pretrained, resolve_base

    target, info = resolve_base(base, home)
    return from_pretrained(AutoConfig, target, info)


def meta_model(config, recipe: Recipe):
    """The model with the recipe's LoRA applied, every tensor on the meta device."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from talkalike.train.trainer import lora_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        return get_peft_model(model, lora_config(recipe))


def _head_and_embedding_names(model) -> set[str]:
    names = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for name, p in model.named_parameters():
            if any(p is q for q in module.parameters()):
                names.add(name)
    return names


def layer_activation_bytes(config, recipe: Recipe, seq_len: int | None = None) -> int:
    """What one decoder layer keeps for its backward over a micro-batch, when it is not checkpointed (bytes)."""
    text = config.get_text_config()
    hidden = text.hidden_size
    intermediate = getattr(text, "intermediate_size", 4 * hidden)
    per_layer_token = 12 * hidden + 5 * intermediate  # saved tensors of one decoder layer (LoRA inputs included)
    return (seq_len or recipe.max_length) * recipe.batch_size * per_layer_token * (2 if recipe.bf16 else 4)


def whole_layers(config, recipe: Recipe, budget_gb: float, seq_len: int | None = None) -> int:
    """How many checkpointed decoder layers may run whole (not recomputed) on a CUDA GPU of `budget_gb`: the estimate
    stays within 90% of it, as `plan` judges a run to fit. Where every layer is recomputed, one layer's activations
    live at a time during the backward; a whole layer's take that place, and each one more adds its own."""
    if not recipe.gradient_checkpointing:
        return 0
    spare = USABLE * budget_gb - estimate(config, recipe, "cuda", seq_len)["peak_memory_gb"]
    if spare < 0:
        return 0
    layers = config.get_text_config().num_hidden_layers
    return min(layers, 1 + math.floor(spare * 1e9 / layer_activation_bytes(config, recipe, seq_len)))


_COUNTED: dict = {}


def _counts(config, recipe: Recipe) -> tuple[int, int, int]:
    """Trainable, total and frozen 16-bit parameters of `config` with the recipe's LoRA, counted on a meta model
    once per config and LoRA (a budget's search asks again and again)."""
    key = (config.to_json_string(), recipe.lora_r, recipe.target_modules, recipe.train_turn_end)
    if key not in _COUNTED:
        model = meta_model(config, recipe)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())  # tied weights are one parameter, counted once
        kept_16bit = sum(p.numel() for n, p in model.named_parameters()
                         if not p.requires_grad and (n in _head_and_embedding_names(model) or p.dim() < 2))
        _COUNTED[key] = trainable, total, kept_16bit
    return _COUNTED[key]


def estimate(config, recipe: Recipe, device: str, seq_len: int | None = None, whole: int = 0) -> dict:
    """Parameter counts and a peak-memory estimate (GB) for training `config` with `recipe` on `device`, `whole`
    checkpointed layers run whole (`whole_layers`)."""
    trainable, total, kept_16bit = _counts(config, recipe)
    frozen = total - trainable
    text = config.get_text_config()
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads

    weight_bytes = 2 if recipe.bf16 else 4
    if recipe.quantize_4bit:
        # bitsandbytes quantizes the decoder's linear layers; embeddings, lm_head and norms stay 16-bit
        base_gb = ((frozen - kept_16bit) * NF4_BITS / 8 + kept_16bit * 2) / 1e9
        method = "QLoRA (NF4 4-bit base, bf16 compute)"
    else:
        base_gb = frozen * weight_bytes / 1e9
        method = f"LoRA ({'bf16' if weight_bytes == 2 else 'fp32'} base)"
    adapter_bytes = 2 if recipe.quantize_4bit else 4  # TRL keeps QLoRA adapters in bf16
    optimizer_bytes = 2 if "8bit" in recipe.optim else 8  # two Adam moments, 8-bit or fp32
    lora_gb = trainable * (2 * adapter_bytes + optimizer_bytes) / 1e9

    seq = seq_len or recipe.max_length
    tokens = seq * recipe.batch_size  # one micro-batch (packed rows of seq tokens)
    act_bytes = 2 if recipe.bf16 else 4
    layer = layer_activation_bytes(config, recipe, seq)
    offloaded = 0
    if recipe.gradient_checkpointing:
        whole = max(0, min(whole, layers))
        checkpoints = tokens * hidden * act_bytes * (layers - whole)  # each layer's input, kept for the recomputation
        if device == "cuda" and recipe.offload_checkpoints:  # in pinned host memory instead (train/qlora.py)
            checkpoints, offloaded = tokens * hidden * act_bytes, checkpoints
        activations = checkpoints + layer * max(1, whole)  # one layer's while it runs again, or the whole ones'
    else:
        activations = layer * layers
    # attention scores of one layer when the kernel materializes them (CPU / masked SDPA); flash kernels do not
    attention = heads * seq * seq * act_bytes * recipe.batch_size if device == "cpu" else 0
    labelled = tokens * (PERSONA_SHARE if recipe.persona_only_loss else 1.0)
    head_tokens = labelled if recipe.masked_head else tokens
    if device == "cuda" and recipe.masked_head:
        # On a GPU the head and the loss run in checkpointed chunks of rows (train/qlora.py: head_loss_sum): only
        # one chunk's logits exist at a time
        from talkalike.train.qlora import _chunk_rows

        head_tokens = min(head_tokens, _chunk_rows(vocab))
    logits = head_tokens * vocab * 4 * 3  # fp32 logits, their softmax and their gradient
    activation_gb = (activations + attention + logits) / 1e9
    peak = base_gb + lora_gb + activation_gb + OVERHEAD_GB[device]
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4), "method": method, "device": device,
            "seq_len": seq, "batch_size": recipe.batch_size, "gradient_checkpointing": recipe.gradient_checkpointing,
            "memory_gb": {"base_weights": round(base_gb, 3), "lora_weights_grads_optimizer": round(lora_gb, 3),
                          "activations_and_logits": round(activation_gb, 3), "overhead": OVERHEAD_GB[device],
                          "offloaded_to_host": round(offloaded / 1e9, 3)},
            "peak_memory_gb": round(peak, 2)}


def detect_hardware() -> dict:
    """The device training would use and how much memory it has (GB)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_gb": round(props.total_memory / 1e9, 2)}
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"device": "cpu", "name": f"{os.cpu_count()} CPUs", "count": 1,
            "memory_gb": round(pages * os.sysconf("SC_PAGE_SIZE") / 1e9, 2)}


def plan(base: str | None, home: Path | None, preset: str | None = None, seq_len: int | None = None,
         dataset: str | None = None, timing: bool = True, memory_budget: float | str | None = None) -> dict:
    """The whole plan: resolved recipe for this machine, counts, memory estimate, whether it fits, and (with
    `timing`) the training time of `dataset` (default: the sample chat) from a training pass timed here. With
    `memory_budget` (GB, or "auto" on a CUDA GPU), how many layers a CUDA run within it keeps whole."""
    hardware = detect_hardware()
    cuda = hardware["device"] == "cuda"
    recipe, notes = resolve_recipe(preset, cuda)
    config = load_config(base, home)
    result = {"base": base or "gemma-3-270m", "preset": recipe.name, "notes": notes,
              "preference_pairs": recipe.preference_pairs,
              **estimate(config, recipe, hardware["device"], seq_len)}
    if not cuda:  # what the same preset would need on a CUDA GPU, for planning a GPU run from a laptop
        gpu_recipe, _ = resolve_recipe(preset or "original", True)
        result["peak_memory_gb_on_cuda"] = estimate(config, gpu_recipe, "cuda", seq_len)["peak_memory_gb"]
    if memory_budget is not None:
        if memory_budget == "auto" and not cuda:
            raise TalkalikeError("--memory-budget auto is a CUDA GPU's memory, and this machine has none; give the "
                                 "card's GB.")
        budget = hardware["memory_gb"] if memory_budget == "auto" else float(memory_budget)
        gpu_recipe = recipe if cuda else resolve_recipe(preset or "original", True)[0]
        whole = whole_layers(config, gpu_recipe, budget, seq_len)
        result["memory_budget"] = {
            "budget_gb": round(budget, 2), "whole_layers": whole,
            "layers": config.get_text_config().num_hidden_layers,
            "peak_memory_gb": estimate(config, gpu_recipe, "cuda", seq_len, whole=whole)["peak_memory_gb"]}
    result["hardware"] = hardware
    result["fits"] = result["peak_memory_gb"] <= USABLE * hardware["memory_gb"]
    if timing:
        result["time"] = training_time(config, recipe, hardware["device"], result["seq_len"], dataset)
    return result


def training_time(config, recipe: Recipe, device: str, seq_len: int, dataset: str | None) -> dict:
    """Tokens/s measured on this machine (train/speed.py) and what the dataset's epochs take at that rate."""
    from talkalike.train import speed

    measured = speed.measure(config, recipe, device, seq_len)
    tokens = speed.dataset_tokens(Path(dataset).expanduser()) if dataset else speed.SAMPLE_EPOCH_TOKENS
    # Packed rows are nearly full, so an epoch's steps are about its tokens over a step's rows of max_length.
    epochs = epochs_for(recipe, math.ceil(tokens / (recipe.max_length * recipe.batch_size * recipe.grad_accum)))
    seconds = tokens * epochs / measured["tokens_per_s"]
    return {**measured, "dataset": dataset or "the bundled sample chat", "epoch_tokens": tokens,
            "epochs": epochs, "seconds": round(seconds)}


def cmd_plan(args) -> int:
    """`talkalike plan`: print the estimate (or JSON)."""
    from talkalike.home import resolve_home

    if args.dataset and not (Path(args.dataset).expanduser() / "train.jsonl").is_file():
        raise TalkalikeError(f"no dataset at {args.dataset}; build one with `talkalike dataset --me NAME --out DIR`.")
    budget = parse_memory_budget(args.memory_budget)
    result = plan(args.base, resolve_home(args.home), args.preset, args.seq_len, args.dataset, not args.no_timing,
                  budget)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for note in result["notes"]:
        say(f"note: {note}")
    memory, hw = result["memory_gb"], result["hardware"]
    print(f"base: {result['base']}   preset: {result['preset']}   method: {result['method']}")
    print(f"parameters: {result['total_params']:,} total, {result['trainable_params']:,} trainable "
          f"({result['trainable_percent']:.2f}%)")
    print(f"micro-batch: {result['batch_size']} x {result['seq_len']} tokens, gradient checkpointing "
          f"{'on' if result['gradient_checkpointing'] else 'off'}")
    print(f"peak memory: ~{result['peak_memory_gb']:.1f} GB (base weights {memory['base_weights']:.2f}, "
          f"LoRA+grads+optimizer {memory['lora_weights_grads_optimizer']:.2f}, activations+logits "
          f"{memory['activations_and_logits']:.2f}, overhead {memory['overhead']:.1f})")
    if memory.get("offloaded_to_host"):
        print(f"host memory: {memory['offloaded_to_host']:.2f} GB of checkpointed layer inputs, offloaded from the GPU")
    if "peak_memory_gb_on_cuda" in result:
        print(f"on a CUDA GPU (4-bit where the preset says so): ~{result['peak_memory_gb_on_cuda']:.1f} GB")
    if "memory_budget" in result:
        within = result["memory_budget"]
        print(f"within {within['budget_gb']:.1f} GB on a CUDA GPU: the last {within['whole_layers']} of "
              f"{within['layers']} layers run whole, not recomputed for the backward (~{within['peak_memory_gb']:.1f} "
              "GB)")
    verdict = "fits" if result["fits"] else "does NOT fit: try --preset original on a GPU, a smaller --base or --seq-len"
    print(f"hardware: {hw['name']} ({hw['device']}), {hw['memory_gb']:.1f} GB available: {verdict}")
    if "time" in result:
        t = result["time"]
        from talkalike.console import elapsed

        print(f"training time here: ~{elapsed(t['seconds'])} for {t['epochs']:g} epoch(s) of {t['dataset']} "
              f"({t['epoch_tokens']:,} tokens an epoch at ~{t['tokens_per_s']:,.0f} tokens/s)")
        print(f"  how: one decoder layer of this model trained on {t['timed_tokens']} tokens here in "
              f"{t['timed_seconds']:.2f} s ({t['flops_per_s'] / 1e9:,.0f} GFLOP/s, {t['dtype']}), priced for every "
              "layer and the LM head; other work on the machine slows it down")
    if result["preference_pairs"]:
        print(f"then preference tuning (DPO) on up to {result['preference_pairs']:,} pairs, not in the time above: "
              "each pair runs its history twice, forward and backward, plus once for the reference")
    return 0
