"""Training recipes as data: the original project's QLoRA recipe and our CPU-friendly default.

    from talkalike.train.recipe import resolve_recipe
    recipe, notes = resolve_recipe("original", cuda=False)   # notes say what changed for this machine

`plan` and `train` read the same Recipe, so the parameter count and memory estimate describe what training runs.
"""

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from talkalike.errors import TalkalikeError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe; the defaults are the original project's QLoRA recipe."""

    name: str = "original"
    quantize_4bit: bool = True  # NF4 + double quantization, bf16 compute (bitsandbytes; CUDA only)
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.07
    target_modules: tuple[str, ...] = ATTENTION + MLP + ("lm_head",)
    learning_rate: float = 2.5e-5
    warmup_steps: int = 2
    weight_decay: float = 0.001
    epochs: float = 3.0
    # A small chat gets more passes: whole epochs until at least `min_steps` optimizer steps, at most `max_epochs`
    # (an explicit --epochs sets the passes exactly). 0: `epochs` as it is, as the original.
    min_steps: int = 0
    max_epochs: float = 3.0
    # Per device; with packing, packed rows of `max_length` tokens rather than samples. The original's 2 x 4 samples
    # become 8 rows in one micro-batch, ~8k tokens an optimizer step either way: a micro-batch's host work on a GPU is
    # mostly fixed, so 4 rows trained a 7B QLoRA 2.0x as fast as 2 and 8 faster again, within the original's peak
    # memory once the checkpointed layers' inputs are offloaded and LoRA's dropout keeps no copies (BENCHMARKS.md,
    # "GPU training").
    batch_size: int = 8
    grad_accum: int = 1
    gradient_checkpointing: bool = True
    # On a CUDA GPU, checkpointed layers keep their inputs in pinned host memory until the backward pass
    # (train/qlora.py), so a micro-batch can hold more tokens at the same peak; no effect on a CPU.
    offload_checkpoints: bool = True
    # On a CUDA GPU, the GPU memory (GB) training may take, or "auto" (the card's): the last decoder layers run whole
    # instead of being recomputed for the backward, as many as the memory estimate (train/plan.py) fits in 90% of it.
    # None: every layer recomputed, in the original recipe's memory.
    memory_budget_gb: float | str | None = None
    optim: str = "paged_adamw_8bit"
    bf16: bool = True
    train_turn_end: bool = False  # also train the embedding row of the token that ends the persona's turn
    lr_scheduler: str = "linear"  # transformers' default, which the original used
    save_total_limit: int = 3
    # Our improvements, each switchable and on by default (see README "Training"):
    persona_only_loss: bool = True  # loss on the persona's turns; False = every turn, as the original
    packing: bool = True  # BFD packing, position ids restart per sample (no cross-sample attention)
    # Tokens per packed row (and the longest sample kept). 2 rows x 1,024 tokens keep a 7B QLoRA micro-batch
    # within the original recipe's peak memory (BENCHMARKS.md, "GPU training").
    max_length: int = 1024
    masked_head: bool = True  # LM head only where a label is taken
    early_stopping_patience: int = 1  # evaluations without a better eval loss before stopping; 0 = off
    memories: int = 0  # past exchanges recalled into each sample (talkalike.memory); the original recalled none
    # Preference tuning after the supervised passes (train/preference.py, DPO): this many pairs of "the real reply
    # beats the persona's reply from another conversation", one pass; 0 = none.
    preference_pairs: int = 0
    preference_beta: float = 0.1  # DPO's beta: how far the twin may move from the supervised one
    preference_lr: float = 5e-5
    preference_batch: int = 16  # pairs per optimizer step
    # Left to the preset, a chat with fewer pairs skips the stage: 388 and 921 pairs moved every fidelity measure
    # the right way (GPU); 150 pairs (a CPU run) lifted R@1 and facts but sent the AUC from 0.75 to 0.89.
    preference_min_pairs: int = 300
    # Weight of the real reply's own per-token loss beside DPO's (RPO, Pang et al. 2024, "Iterative Reasoning
    # Preference Optimization"); 0 = DPO alone.
    preference_nll: float = 0.0
    # This share of the pairs (spread over them) rejects the base model's own reply to the history instead, sampled
    # with the adapter off before the stage: a reply in the base model's manner, where the others are the persona's
    # own. 0 = none. Not measured yet, so off in every preset (benchmarks/recipe_scan.py --variants dpo-base-half).
    preference_base_share: float = 0.0
    seed: int = 42

    def as_dict(self) -> dict:
        """The recipe as plain JSON-ready data."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


PRESETS = {
    "original": Recipe(),
    # Ours, tuned for the embedded 270M model on a 2-core CPU (BENCHMARKS.md "CPU training" has the measurements):
    "default": Recipe(
        name="default",
        quantize_4bit=False,  # 270M fits anywhere; 4-bit would only slow it down
        lora_r=16,  # r=16 on all projections matches r=32 in style shift on 300 conversations, at half the adapter
        lora_alpha=32,
        # A base model has rarely if ever produced a chat template's turn-end token (the embedded Gemma: 31 nats on
        # the sample's persona turns). LoRA on the projections alone got that to 12 nats in one epoch, so the twin
        # never closed its turn; training the token's own (tied) row lets it learn where the persona stops.
        train_turn_end=True,
        lora_dropout=0.0,  # one pass over the data leaves little to regularise; on a CPU dropout's masks were 15% of a step
        target_modules=ATTENTION + MLP,  # no lm_head: Gemma ties it to the 262k-row embedding; its LoRA buys little
        learning_rate=2e-4,  # small data, few steps: 2.5e-5 barely moves a 270M model in a CPU-sized budget
        warmup_steps=2,
        weight_decay=0.001,
        # One pass over a large chat; a small one is seen again until ~100 optimizer steps (~200k tokens). On both
        # bundled samples 1 pass left the twin off context (Noa: 51 steps, R@1 0.45, real-vs-generated AUC 0.87;
        # the group chat: 27 steps, its facts below the base model's) and 2-3 passes moved every fidelity measure
        # (Noa 2 passes: R@1 0.48, AUC 0.79, 3-word repeats 7% -> 0%; group 3 passes: R@1 0.49, AUC 0.79),
        # BENCHMARKS.md "Recipe scan".
        epochs=1.0,
        min_steps=100,
        max_epochs=3.0,
        batch_size=1,  # one packed row of `max_length` tokens per step ...
        grad_accum=2,  # ... times 2: ~2k tokens per optimizer step
        gradient_checkpointing=False,  # memory is plentiful for 270M; recomputing costs a third more compute
        optim="adamw_torch",
        bf16=True,  # on a CUDA GPU, and on CPUs that compute bf16 natively; others train in fp32 (resolve_recipe)
        max_length=1024,  # short rows keep CPU attention (dense, masked per sample) cheap
        # Train with the persona's own earlier exchanges in the prompt, as chat and eval will recall them, so the
        # model learns to answer from what the persona said before (facts, plans) rather than invent it.
        memories=3,
        # Then DPO on every answering persona turn (at most 2,000): the real reply against one of theirs from another
        # conversation, with the real reply's own loss beside it. On a GPU, on both bundled samples, R@1 rose 12-14
        # points and context identification 0.1-0.3 of the real replies' rate, facts held or rose; DPO alone sent the
        # AUC from 0.77 to 0.92, with the reply's loss it went to 0.73 (BENCHMARKS.md, "Preference tuning").
        # A CPU skips it (resolve_recipe): it would cost several times the supervised passes.
        preference_pairs=2000,
        preference_nll=1.0,
    ),
}


def epochs_for(recipe: Recipe, steps_per_epoch: int) -> float:
    """The passes over the data: `recipe.epochs`, raised in whole epochs to reach `recipe.min_steps` optimizer steps,
    but not past `recipe.max_epochs`."""
    import math

    if not recipe.min_steps or steps_per_epoch <= 0:
        return recipe.epochs
    wanted = math.ceil(recipe.min_steps / steps_per_epoch)
    return max(recipe.epochs, min(float(wanted), recipe.max_epochs))


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (Intel AMX or AVX512-BF16), as read from /proc/cpuinfo on Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so fp32, which every CPU computes well
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_preset(cuda: bool) -> str:
    """The original recipe on a CUDA GPU, ours elsewhere."""
    return "original" if cuda else "default"


def resolve_recipe(preset: str | None, cuda: bool, **overrides) -> tuple[Recipe, list[str]]:
    """The recipe for this machine, and one note per setting changed (or kept) because there is no CUDA GPU."""
    name = preset or default_preset(cuda)
    recipe = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("epochs") is not None:  # asked for exactly: no floor of steps
        recipe = replace(recipe, min_steps=0)
    notes = []
    if not cuda:
        if recipe.quantize_4bit:
            notes.append("no CUDA GPU: training without 4-bit quantization (bitsandbytes 4-bit needs CUDA)")
            recipe = replace(recipe, quantize_4bit=False)
        if recipe.bf16 and cpu_computes_bf16():
            # AMX / AVX512-BF16 multiply bf16 ~8x faster than fp32 here; a whole training step of the embedded model
            # costs ~1.6x fewer CPU-seconds than in fp32, at the same loss (BENCHMARKS.md, "CPU training").
            notes.append("no CUDA GPU: bf16 on this CPU's native bf16 instructions (AMX / AVX512-BF16)")
        elif recipe.bf16:
            notes.append("no CUDA GPU: fp32 instead of bf16 (this CPU has no native bf16 instructions)")
            recipe = replace(recipe, bf16=False)
        if recipe.preference_pairs and overrides.get("preference_pairs") is None:
            notes.append("no CUDA GPU: no preference tuning after the supervised passes (on a CPU it would take "
                         "several times as long as they do; --preference-pairs N asks for it)")
            recipe = replace(recipe, preference_pairs=0)
        if recipe.optim.startswith("paged_") or "8bit" in recipe.optim:
            notes.append(f"no CUDA GPU: optimizer adamw_torch instead of {recipe.optim} (bitsandbytes needs CUDA)")
            recipe = replace(recipe, optim="adamw_torch")
    return recipe, notes


def parse_memory_budget(text: str | None) -> float | str | None:
    """`--memory-budget`'s value: GB (a positive number) or "auto"; one clear error otherwise."""
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise TalkalikeError(f"--memory-budget takes GB of GPU memory (a number above 0) or auto, not {text!r}.")
    return value
