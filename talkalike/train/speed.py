"""How fast this machine trains a base model, measured here in a second or two, for `talkalike plan`.

The base is built from its config with a single decoder layer and a small vocabulary (random weights, the preset's
dtype, its LoRA), and a forward and backward pass of one micro-batch is timed on the device training would use: a
second or two, and little memory even for a 7B model. Counting that pass's
floating-point operations from the config gives the rate this machine reaches on this model's own matrices, which
then prices a whole training step: every decoder layer forward and backward (activation gradients only: the base is
frozen, LoRA's own gradients are a rounding error), the recomputation when gradient checkpointing is on, attention,
and the LM head on the labelled positions only (the trainer's masked head). 4-bit dequantization is not timed: on a
GPU the QLoRA preset is timed in bf16.
"""

import copy
import time

from talkalike.train.recipe import Recipe

TIMED_FLOPS = 20e9  # the timed pass's work: a second or so on a laptop core, long enough to time reliably
TIMED_TOKENS = (32, 256)  # the timed row's length, within these bounds, from TIMED_FLOPS and the layer's size
TIMED_VOCAB = 8192  # the timed model's vocabulary: the head is a matrix product like the layers', priced per FLOP
TIMED_PASSES = 2  # after one warm-up pass; the faster is kept (other work on the machine only slows a pass down)
TIMED_HEAD_SHARE = 0.5  # the timed pass runs the LM head on the last half of its positions, as the masked head does
# Tokens of one epoch of the bundled sample chat as the default preset trains it (recalled exchanges included):
# BENCHMARKS.md, "Following the conversation" (the demo of 2026-12-03: 93,513 tokens in 51 optimizer steps).
SAMPLE_EPOCH_TOKENS = 93_513


def _one_layer(config, vocab: int | None = None):
    """The same architecture with one decoder layer (and `vocab` tokens, when given)."""
    small = copy.deepcopy(config)
    small.num_hidden_layers = 1
    if vocab:
        small.vocab_size = vocab
    if getattr(small, "layer_types", None):
        small.layer_types = small.layer_types[:1]
    return small


def step_flops_per_token(config, layers: int, head_share: float, seq: int, checkpointing: bool) -> tuple[float, int]:
    """FLOPs a training step spends per token, and the parameters of one decoder layer (from a meta-device build)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_one_layer(config))
    layer_params = sum(p.numel() for p in model.model.layers[0].parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    width = text.num_attention_heads * head_dim
    linear = 2 * layer_params * (3 if checkpointing else 2)  # forward, input gradients (+ recomputed forward)
    attention = 4 * seq * width * 3  # QK^T and AV per token, forward and backward
    head = 2 * text.hidden_size * text.vocab_size * 2 * head_share  # forward and input gradient, labelled positions
    return layers * (linear + attention) + head, layer_params


def measure(config, recipe: Recipe, device: str, seq: int) -> dict:
    """Time one decoder layer's training pass here and price a full training step: tokens/s and the rate reached."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from talkalike.train.trainer import lora_config

    dtype = torch.bfloat16 if recipe.bf16 else torch.float32
    timed_config = _one_layer(config, TIMED_VOCAB)
    per_token, _ = step_flops_per_token(timed_config, 1, TIMED_HEAD_SHARE, seq, checkpointing=False)
    tokens = int(min(max(TIMED_FLOPS / per_token, TIMED_TOKENS[0]), TIMED_TOKENS[1], seq))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(timed_config, dtype=dtype)
    model = get_peft_model(model, lora_config(recipe))
    ids = torch.randint(0, TIMED_VOCAB, (1, tokens), device=device)
    kept = int(tokens * TIMED_HEAD_SHARE)
    best = float("inf")
    for attempt in range(TIMED_PASSES + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=recipe.bf16):
            logits = model(input_ids=ids, logits_to_keep=kept, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[0].float(), ids[0, -kept:])
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first pass warms caches and kernels up
            best = min(best, time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    # The timed model: one layer, a small vocabulary, no checkpointing, the head on half the positions.
    timed, _ = step_flops_per_token(timed_config, 1, TIMED_HEAD_SHARE, tokens, checkpointing=False)
    rate = timed * tokens / best
    from talkalike.train.plan import PERSONA_SHARE

    head_share = PERSONA_SHARE if recipe.persona_only_loss and recipe.masked_head else 1.0
    full, _ = step_flops_per_token(config, config.get_text_config().num_hidden_layers, head_share, seq,
                                   recipe.gradient_checkpointing)
    return {"tokens_per_s": rate / full, "flops_per_s": rate, "timed_tokens": tokens, "timed_seconds": best,
            "dtype": str(dtype).removeprefix("torch.")}


def dataset_tokens(folder) -> int:
    """Tokens one epoch of a dataset folder trains, scaled from the sample chat's measured count by the datasets'
    estimated sizes (the dataset stage's len(text)/2.5 estimate, recalled exchanges scaling alike)."""
    from pathlib import Path

    from talkalike.files import read_jsonl
    from talkalike.prepare.dataset import TURN_OVERHEAD, estimate_tokens

    def estimate(path: Path) -> int:
        return sum(estimate_tokens(m["content"]) + TURN_OVERHEAD for row in read_jsonl(path) for m in row["messages"])

    return round(estimate(Path(folder) / "train.jsonl") * TOKENS_PER_ESTIMATED_TOKEN)


# Trained tokens per estimated token, from the sample chat: SAMPLE_EPOCH_TOKENS against the 70,892 estimated for its
# train.jsonl. The Gemma tokenizer's real count is lower than the estimate, the 3 recalled exchanges each sample
# opens with make it higher.
TOKENS_PER_ESTIMATED_TOKEN = SAMPLE_EPOCH_TOKENS / 70_892
