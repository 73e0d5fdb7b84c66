"""QLoRA training throughput and memory on one CUDA GPU: the original recipe against talkalike's GPU path.

Runs every variant in one process on the same card and prints a table (also written as JSON under --out):

    python benchmarks/gpu_train.py --out /tmp/gpu-bench [--models mistral-7b,gemma-1b-256k] [--variants ...]

Models are built from a config with random weights and quantized to NF4 in memory: nothing is downloaded, and
writing a 7B checkpoint to disk would take longer than the benchmark. Samples have the per-turn token lengths of the
bundled sample chat (benchmarks/data/chat_turn_tokens.json, made by benchmarks/chat_lengths.py), laid out as the
dataset stage renders them (Gemma-style turn markers around each turn).

Variants (identical LoRA r=32, alpha=64 on every projection + lm_head, identical NF4 double-quant weights):
- baseline: the original recipe exactly as its report shows it: transformers.Trainer, DataCollatorForLanguageModeling
  with padding, batch 2 x accumulation 4, gradient checkpointing, paged_adamw_8bit, bf16; loss on every token.
- ours: talkalike's default GPU training path (talkalike.train.trainer), with loss on every token too, so the maths
  is the original's and the losses must agree.
- ours-persona: the same path with its default loss on the persona's turns only (fewer trained tokens per sample).
- ours-persona-plain, -noliger, -nooffload: ours-persona without the speed-ups that keep the maths (attention per
  packed sample, Liger's layer kernels, no fp32 round trip of LoRA inputs) and checkpoint offloading, without
  Liger's kernels alone, or without offloading alone.
- ours-persona-b4, -b8, -b8-nooffload: 4 or 8 packed rows per micro-batch (same tokens per optimizer step).
- ours-persona-nolean, -b8-nolean: the default, or 8 rows, with peft's own LoRA branch (train/lean_lora.py).
- ours-persona-noadd, -norope, -nokernels, -norecompute, -nobase, -noflat, -nonf4: the default without one
  speed-up (lora-add, liger-rope, lora-kernels, lean-recompute, lora-base, flat-optimizer, nf4-kernel;
  talkalike.train.trainer.SPEEDUPS); -before, -b8-before, -b4-before: without those since the fourteenth session's
  default (-b4-before: that default, 4 rows x 2).
- ours-persona-adam, -b8-adam: fused fp32 AdamW instead of the recipe's paged 8-bit AdamW.
- ours-persona-untimed: the default with the speed-ups not yet on by default (talkalike.train.trainer.UNTIMED_SPEEDUPS);
  -noprefetch, -noscaled, -nogqa: the default without one of the seventeenth session's three (prefetch-checkpoints,
  scaled-products, native-gqa); -sixteenth: without all three (the sixteenth session's default); -walks: the default
  with Trainer's own unwrapping, gradient clipping and zeroing, each a walk over the model every step (PersonaTrainer
  walks it once).
- ours-persona-mem12, -mem24, -mem80: the default with a memory budget of 12 GB, 24 GB, or 90% of this card's (80 GB
  on an H100): as many of the last layers as fit run whole instead of being recomputed (selective recomputation; the
  recipe's memory_budget_gb). The first two also cap this process's share of the card at their budget, as a card of
  that size would.
- ours-persona-b8-norope, -b8-nokernels, -b8-norecompute: 8 rows without one of the three.
- trl-liger: the strong do-it-yourself baseline: TRL's own SFTTrainer with its packing (BFD, padding-free: position
  ids, no attention across samples), Liger's kernels (use_liger_kernel=True: RMSNorm, RoPE, SwiGLU; TRL computes the
  loss with its own chunked LM head and refuses Liger's fused cross-entropy) and SDPA attention, loss on every token,
  the same batch geometry, optimizer and precision as ours (the CUDA recipe). One LoRA difference, forced by TRL: it
  refuses an adapter on lm_head (its head multiplies by lm_head.weight, so the adapter would never train), so this
  variant adapts the seven projections only. Needs liger-kernel (`pip install liger-kernel`).
"""

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trace_gaps import idle_gaps, load_trace, print_gaps, print_self_times, self_times  # noqa: E402
from talkalike.train.qlora import release_optimizer_overrides  # noqa: E402
from talkalike.train.trainer import SPEEDUPS, UNTIMED_SPEEDUPS  # noqa: E402

DENSE_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
# ours and ours-persona run with the default speed-ups (all of talkalike.train.trainer.SPEEDUPS) and the CUDA recipe
# as it is; the other rows change one thing each, to show what each moved. Liger patches the model classes of its
# architecture process-wide, so a row without it must run before any row with it (the default order does).
# The b4/b8 rows put 4 or 8 packed rows in a micro-batch (accumulating 2 or 1): the same tokens per optimizer step.
ALL = None
NO_OFFLOAD = {"offload_checkpoints": False}
NO_LEAN = ("packed-attention", "liger", "lora-input-cast")  # every speed-up but the lean LoRA branch
NO_ADD = tuple(name for name in SPEEDUPS if name != "lora-add")  # the lean branch adding after its product, as peft
FUSED_ADAM = {"optim": "adamw_torch_fused"}  # fp32 AdamW states, one multi-tensor kernel (not paged 8-bit)
WALKS = "trainer_walks"  # not a recipe field: Trainer's own walks over the model (run_ours)
# the speed-ups since the fourteenth session's default (flat-optimizer, nf4-kernel: the sixteenth's; the last three the
# seventeenth's)
NEW_SINCE_16 = ("prefetch-checkpoints", "scaled-products", "native-gqa")
NEW_SINCE_14 = ("liger-rope", "lora-kernels", "lean-recompute", "lora-base", "flat-optimizer", "nf4-kernel",
                *NEW_SINCE_16)


def without(*names):
    return tuple(name for name in SPEEDUPS if name not in names)


OURS_VARIANTS = {  # name: (speed-ups, recipe changes)
    "ours-persona-plain": ((), NO_OFFLOAD),
    "ours-persona-noliger": (("packed-attention", "lora-input-cast"), NO_OFFLOAD),
    "ours-persona-nooffload": (ALL, NO_OFFLOAD),
    "ours-persona-b4": (ALL, {"batch_size": 4, "grad_accum": 2}),
    "ours-persona-b8": (ALL, {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-b8-nooffload": (ALL, {"batch_size": 8, "grad_accum": 1, **NO_OFFLOAD}),
    "ours-persona-nolean": (NO_LEAN, {}),
    "ours-persona-b8-nolean": (NO_LEAN, {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-noadd": (NO_ADD, {}),
    "ours-persona-b8-noadd": (NO_ADD, {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-adam": (ALL, FUSED_ADAM),
    "ours-persona-before": (without(*NEW_SINCE_14), {}),
    "ours-persona-norope": (without("liger-rope"), {}),
    "ours-persona-nokernels": (without("lora-kernels"), {}),
    "ours-persona-norecompute": (without("lean-recompute"), {}),
    "ours-persona-nobase": (without("lora-base"), {}),
    "ours-persona-noflat": (without("flat-optimizer"), {}),
    "ours-persona-nonf4": (without("nf4-kernel"), {}),
    "ours-persona-untimed": ((*SPEEDUPS, *UNTIMED_SPEEDUPS), {}),
    "ours-persona-noprefetch": (without("prefetch-checkpoints"), {}),
    "ours-persona-noscaled": (without("scaled-products"), {}),
    "ours-persona-nogqa": (without("native-gqa"), {}),
    "ours-persona-sixteenth": (without(*NEW_SINCE_16), {}),
    "ours-persona-walks": (ALL, {WALKS: True}),
    "ours-persona-mem12": (ALL, {"memory_budget_gb": 12.0}),
    "ours-persona-mem24": (ALL, {"memory_budget_gb": 24.0}),
    "ours-persona-mem80": (ALL, {"memory_budget_gb": "auto"}),
    "ours-persona-b8-before": (without(*NEW_SINCE_14), {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-b4-before": (without(*NEW_SINCE_14), {"batch_size": 4, "grad_accum": 2}),
    "ours-persona-b8-norope": (without("liger-rope"), {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-b8-nokernels": (without("lora-kernels"), {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-b8-norecompute": (without("lean-recompute"), {"batch_size": 8, "grad_accum": 1}),
    "ours-persona-b8-adam": (ALL, {"batch_size": 8, "grad_accum": 1, **FUSED_ADAM}),
}
VARIANTS = ("baseline", "ours", *OURS_VARIANTS, "ours-persona", "trl-liger")

MODELS = {
    # Mistral-7B v0.1 shapes, vocab 32k (the architecture)
    "mistral-7b": dict(
        kind="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0,
        sliding_window=None,
    ),
    # Gemma 3 1B shapes with Gemma's 262k-token vocabulary: the big-vocabulary case
    "gemma-1b-256k": dict(
        kind="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768,
        sliding_window=512,
    ),
}


def card_name() -> str:
    name = torch.cuda.get_device_name()
    return next((key for key in DENSE_BF16_PEAK if key in name), name)


def build_config(name: str):
    from transformers import Gemma3TextConfig, MistralConfig

    spec = dict(MODELS[name])
    kind = spec.pop("kind")
    config = MistralConfig(**spec) if kind == "mistral" else Gemma3TextConfig(**spec)
    config.use_cache = False
    return config


def build_quantized_model(name: str, seed: int = 0):
    """A random-weight model with every projection in NF4 (double quant, bf16 compute), built in GPU memory."""
    import bitsandbytes as bnb
    from torch import nn
    from transformers import AutoModelForCausalLM

    config = build_config(name)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    matmul_params = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            matmul_params += child.weight.numel()
            if child_name == "lm_head":
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4", device="cuda",
            )
            quantized.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
            ).to("cuda")
            setattr(parent, child_name, quantized)
            del child
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.is_loaded_in_4bit = True  # what peft.prepare_model_for_kbit_training looks for
    gc.collect()
    torch.cuda.empty_cache()
    return model, matmul_params


def load_turn_lengths() -> list[list[tuple[str, int]]]:
    """Per-sample turn token counts from the sample chat; else a documented synthetic stand-in."""
    path = Path(__file__).resolve().parent / "data" / "chat_turn_tokens.json"
    if path.is_file():
        return [[(role, n) for role, n in sample] for sample in json.loads(path.read_text())]
    rng = random.Random(0)
    samples = []
    for _ in range(2000):  # lognormal turns, median ~300 tokens a sample, as the first look measured
        turns = rng.randint(4, 16)
        samples.append([("user" if i % 2 == 0 else "assistant", max(3, int(rng.lognormvariate(3.0, 0.8))))
                        for i in range(turns)])
    return samples


def make_rows(vocab_size: int, n_samples: int, seed: int = 0) -> list[dict]:
    """Token rows: input_ids plus the persona mask, with Gemma-like turn markers around each turn."""
    rng = random.Random(seed)
    lengths = load_turn_lengths()
    bos, start, end, newline = 2, 105, 106, 107  # fixed ids standing in for <bos>, turn markers and "\n"
    rows = []
    for i in range(n_samples):
        ids, mask = [bos], [0]
        for role, n in lengths[i % len(lengths)]:
            header = [start, 200 + (role == "assistant"), newline]
            body = [rng.randrange(1000, vocab_size) for _ in range(n)] + [end, newline]
            ids += header + body
            mask += [0] * len(header) + [int(role == "assistant")] * len(body)
        rows.append({"input_ids": ids[:4096], "mask": mask[:4096]})
    return rows


def peak_flops() -> float:
    return DENSE_BF16_PEAK.get(card_name(), float("nan"))


class StepTimer:
    """Trainer callback: time and non-padding tokens of the optimizer steps after warm-up, and loss per step.

    `tokens(state)` reads the running count of non-padding tokens trained so far."""

    def __init__(self, tokens, warmup: int = 2, profile: bool = False, trace_to: Path | None = None,
                 stack: bool = False):
        from transformers import TrainerCallback

        outer = self
        self.profile: dict = {}

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                if profile and state.global_step == warmup + 1:
                    outer.profiler = torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                        with_stack=stack)
                    outer.profiler.__enter__()
                outer.begin, outer.begin_tokens = time.perf_counter(), tokens(state)

            def on_step_end(self, args, state, control, **kwargs):
                torch.cuda.synchronize()
                profiled = getattr(outer, "profiler", None) is not None
                if profiled:  # the profiled step is not timed
                    wall = time.perf_counter() - outer.begin
                    outer.profiler.__exit__(None, None, None)
                    outer.profile = summarize_profile(outer.profiler, wall, tokens(state) - outer.begin_tokens)
                    if trace_to is not None:  # the timeline, for where the compute stream sat idle
                        outer.profile["idle"] = saved_trace_gaps(outer.profiler, trace_to)
                    outer.profiler = None
                if state.global_step > warmup and not profiled:
                    outer.seconds += time.perf_counter() - outer.begin
                    outer.timed_tokens += tokens(state) - outer.begin_tokens
                outer.tokens_at_step.append(tokens(state))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    outer.losses.append(logs["loss"])

        self.callback = _Callback()
        self.seconds = 0.0
        self.timed_tokens = 0
        self.tokens_at_step: list[int] = []
        self.losses: list[float] = []

    def loss_after(self, tokens: int) -> float:
        """The logged loss of the first step by which `tokens` tokens had been trained."""
        for seen, loss in zip(self.tokens_at_step, self.losses, strict=False):
            if seen >= tokens:
                return loss
        return self.losses[-1] if self.losses else float("nan")

    def result(self) -> dict:
        return {"tokens_per_s": self.timed_tokens / self.seconds, "losses": self.losses,
                "first_step_loss": self.losses[0] if self.losses else float("nan"),
                "tokens_at_step": self.tokens_at_step, "trained_tokens": self.tokens_at_step[-1],
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
                "reserved_gb": torch.cuda.max_memory_reserved() / 2**30}


KERNEL_KINDS = (  # (kind, words in a kernel's name), first match wins
    ("matrix products", ("nvjet", "gemm", "cutlass", "sm90_xmma", "cublas")),
    ("attention", ("flash", "fmha", "attention")),
    ("dropout", ("dropout",)),
    ("NF4 de-quantization", ("dequant",)),
    ("optimizer", ("optimizer", "adam")),
    ("casts and copies", ("memcpy", "memset", "copy_kernel", "catarray")),
    ("element-wise", ("elementwise", "vectorized", "unrolled")),
    ("reductions", ("reduce_kernel",)),
)


def kernel_kind(name: str) -> str:
    """A kernel's kind for the profile's summary, from its name (Triton's kernels have plain names)."""
    low = name.lower()
    kind = next((kind for kind, words in KERNEL_KINDS if any(word in low for word in words)), None)
    return kind or ("other CUDA" if low.startswith("void ") else "Triton")


def summarize_profile(profiler, wall_s: float, tokens: int) -> dict:
    """Where one optimizer step's time went: the GPU's busy share (kernel time over wall time), how many kernels it
    launched, the costliest kernels and the costliest operators on the host (self time)."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    # Kernels only: an operator's own device time is its kernels' time again.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                         "cuLaunchKernelEx"))
    top_gpu = sorted(kernels, key=lambda e: -e.self_device_time_total)[:40]
    top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    kinds: dict[str, list] = {}
    for event in kernels:
        kind = kinds.setdefault(kernel_kind(event.key), [0, 0.0])
        kind[0] += event.count
        kind[1] += event.self_device_time_total / 1e3
    return {
        "wall_s": round(wall_s, 3), "tokens": tokens, "gpu_busy_s": round(busy, 3),
        "gpu_busy_share": round(busy / wall_s, 3), "kernel_launches": launches,
        "kinds_ms": sorted(((name, n, round(ms, 1)) for name, (n, ms) in kinds.items()), key=lambda k: -k[2]),
        "top_kernels_ms": [(e.key[:110], e.count, round(e.self_device_time_total / 1e3, 1)) for e in top_gpu],
        "top_host_ms": [(e.key[:70], e.count, round(e.self_cpu_time_total / 1e3, 1)) for e in top_cpu],
    }


def saved_trace_gaps(profiler, path: Path) -> dict:
    """Write the profiled step's Chrome trace to `path` (gzipped) and return where its compute stream sat idle, and
    where a profile with Python stacks spent host time (benchmarks/trace_gaps.py)."""
    import gzip
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(raw))
        trace = load_trace(raw)
        gaps = idle_gaps(trace)
        gaps["host_by_function"] = self_times(trace)
        del trace
        with raw.open("rb") as source, gzip.open(path, "wb", compresslevel=6) as target:
            shutil.copyfileobj(source, target)
    return gaps


def word_tokenizer(vocab_size: int):
    """A tokenizer over the model's ids, for the collators' padding (the rows are already token ids)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                   pad_token="t0", unk_token="t3", eos_token="t1")


def run_baseline(model, rows: list[dict], steps: int, vocab_size: int) -> StepTimer:
    """The original recipe: HF Trainer + PEFT, padding collator, 2 x 4, checkpointing, paged 8-bit AdamW."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.07, bias="none", task_type="CAUSAL_LM",
                      target_modules=TARGETS)
    model = get_peft_model(model, lora)
    timer = StepTimer(lambda state: state.num_input_tokens_seen)
    args = TrainingArguments(
        output_dir="/tmp/bench-baseline", per_device_train_batch_size=2, gradient_accumulation_steps=4,
        gradient_checkpointing=True, optim="paged_adamw_8bit", bf16=True, learning_rate=2.5e-5, warmup_steps=2,
        weight_decay=0.001, max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
        dataloader_drop_last=True, remove_unused_columns=False, include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": r["input_ids"]} for r in rows],
                      data_collator=DataCollatorForLanguageModeling(word_tokenizer(vocab_size), mlm=False),
                      callbacks=[timer.callback])
    trainer.train()
    return timer


def run_ours(model, rows: list[dict], vocab_size: int, all_turns: bool, profile: bool = False,
             speedups=None, changes: dict | None = None, trace_to: Path | None = None,
             stack: bool = False) -> StepTimer:
    """talkalike's GPU path (talkalike.train.trainer.make_trainer with the CUDA default recipe), on the same rows."""
    from talkalike.train.recipe import resolve_recipe
    from talkalike.train.trainer import make_trainer

    changes = dict(changes or {})
    walks = changes.pop(WALKS, False)
    recipe, _ = resolve_recipe(None, cuda=True, epochs=1.0, early_stopping_patience=0, **changes)
    records = [{"input_ids": r["input_ids"],
                "assistant_masks": [1] * len(r["mask"]) if all_turns else r["mask"]} for r in rows]
    counts = {"tokens": 0, "trained_tokens": 0}
    timer = StepTimer(lambda state: counts["tokens"], profile=profile, trace_to=trace_to, stack=stack)
    trainer = make_trainer(model, word_tokenizer(vocab_size), records, [], recipe, Path("/tmp/bench-ours"),
                           callbacks=[timer.callback], token_counts=counts, speedups=speedups)
    trainer.args.save_strategy = "no"
    if walks:
        trainer_walks(trainer)
    budget = recipe.memory_budget_gb
    if isinstance(budget, float):  # a card of that size
        card = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget * 1e9 / card))
    try:
        trainer.train()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    timer.trained = counts["trained_tokens"]
    return timer


def trainer_walks(trainer) -> None:
    """`trainer` (a PersonaTrainer) unwraps, clips and zeroes as Trainer does: each a walk over the whole model."""
    import types

    from transformers import Trainer

    persona = type(trainer)
    trainer._walked = lambda model: (trainer.accelerator.unwrap_model(model), None)
    trainer._clip_grad_norm = types.MethodType(Trainer._clip_grad_norm, trainer)
    trainer.train = types.MethodType(super(persona, persona).train, trainer)  # no zeroing_trained_only


def trl_liger_config(output_dir: str, use_cpu: bool = False, liger: bool = True):
    """The do-it-yourself baseline's SFTConfig (TRL's options only): packing with TRL's BFD into padding-free rows of
    the CUDA recipe's max_length, Liger's kernels, and the recipe's batch geometry, optimizer and learning rate, so that
    its optimizer steps hold the same tokens as ours. `use_cpu`: the CPU test builds the same config and trainer
    (without training: Liger and the 8-bit optimizer come in at train()). `liger=False`: without Liger's kernels
    (gpu_unsloth.py, where Unsloth brings its own)."""
    from trl import SFTConfig

    from talkalike.train.recipe import resolve_recipe

    recipe, _ = resolve_recipe(None, cuda=True, epochs=1.0, early_stopping_patience=0)
    return SFTConfig(
        output_dir=output_dir, num_train_epochs=1, per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum, gradient_checkpointing=recipe.gradient_checkpointing,
        optim=recipe.optim, bf16=recipe.bf16, learning_rate=recipe.learning_rate, warmup_steps=2,
        weight_decay=recipe.weight_decay, logging_steps=1, save_strategy="no", report_to="none", use_cpu=use_cpu,
        packing=True, packing_strategy="bfd", padding_free=True, max_length=recipe.max_length,
        use_liger_kernel=liger, include_num_input_tokens_seen="non_padding",
    )


def trl_liger_lora():
    """The benchmark's LoRA (r=32, alpha=64, dropout 0.07) on the seven projections: TRL refuses one on lm_head."""
    from peft import LoraConfig

    return LoraConfig(r=32, lora_alpha=64, lora_dropout=0.07, bias="none", task_type="CAUSAL_LM",
                      target_modules=[t for t in TARGETS if t != "lm_head"])


def trl_liger_trainer(model, rows: list[dict], vocab_size: int, callbacks: list, use_cpu: bool = False):
    """TRL's SFTTrainer over the already tokenized rows (loss on every token), LoRA applied by TRL itself."""
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=trl_liger_config("/tmp/bench-trl-liger", use_cpu),
                      train_dataset=Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows]),
                      processing_class=word_tokenizer(vocab_size), peft_config=trl_liger_lora(), callbacks=callbacks)


def run_trl_liger(model, rows: list[dict], vocab_size: int) -> StepTimer:
    """The do-it-yourself baseline (module docstring): TRL + packing + Liger + SDPA, timed like the others."""
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():  # Trainer would only fail at train(), after the model was wrapped
        raise RuntimeError("trl-liger needs liger-kernel: pip install liger-kernel")
    timer = StepTimer(lambda state: state.num_input_tokens_seen)
    trainer = trl_liger_trainer(model, rows, vocab_size, [timer.callback])
    trainer.train()
    return timer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-bench"))
    parser.add_argument("--models", default="mistral-7b,gemma-1b-256k")
    parser.add_argument("--variants", default="baseline,ours,ours-persona",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=12, help="baseline optimizer steps (8 samples each)")
    parser.add_argument("--ours-factor", type=int, default=6, help="ours gets this many times the baseline's samples")
    parser.add_argument("--profile", action="store_true",
                        help="profile one optimizer step of ours/ours-persona (torch.profiler; not timed)")
    parser.add_argument("--stack", action="store_true", help="with --profile: Python stacks, host time by function")
    args = parser.parse_args()
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LORA_KERNELS_CONFIG"):  # tiles chosen by benchmarks/gpu_lora_kernels.py on this card
        from talkalike.train import lora_kernels

        lora_kernels.CONFIG.update(json.loads(Path(os.environ["LORA_KERNELS_CONFIG"]).read_text()))
        print("dropout kernels' tiles:", lora_kernels.CONFIG, flush=True)
    results = []
    baseline_tokens: dict[str, int] = {}
    for model_name in args.models.split(","):
        for variant in args.variants.split(","):
            # What an earlier variant left allocated would count in this one's peak: it must be ~0.
            leftover_gb = torch.cuda.memory_allocated() / 2**30
            model, matmul_params = build_quantized_model(model_name)
            vocab = model.config.vocab_size
            model_gb = torch.cuda.memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            try:
                if variant == "baseline":
                    timer = run_baseline(model, make_rows(vocab, 8 * args.steps), args.steps, vocab)
                    baseline_tokens[model_name] = timer.tokens_at_step[-1]
                    row = timer.result()
                elif variant == "trl-liger":
                    # The same rows as ours: the same packing algorithm and row length make the same steps.
                    timer = run_trl_liger(model, make_rows(vocab, 8 * args.steps * args.ours_factor), vocab)
                    row = timer.result()
                else:
                    # Packed rows hold ~16k tokens per optimizer step: give ours enough samples for timed steps.
                    speedups, changes = OURS_VARIANTS.get(variant, (ALL, {}))
                    timer = run_ours(model, make_rows(vocab, 8 * args.steps * args.ours_factor), vocab,
                                     all_turns=(variant == "ours"), profile=args.profile, speedups=speedups,
                                     changes=changes, trace_to=out / f"trace-{model_name}-{len(results)}.json.gz",
                                     stack=args.stack)
                    row = timer.result()
                    if timer.profile:
                        row["profile"] = timer.profile
                    row["persona_tokens"] = timer.trained
                row["loss_at_baseline_tokens"] = timer.loss_after(baseline_tokens.get(model_name, 0))
            except Exception as error:  # one variant failing must not lose the others' numbers
                import traceback

                traceback.print_exc()
                row = {"error": f"{type(error).__name__}: {error}"}
            row.update(model=model_name, variant=variant, wall_s=time.perf_counter() - t0,
                       card=torch.cuda.get_device_name(), matmul_params=matmul_params, leftover_gb=leftover_gb,
                       model_gb=model_gb)
            if "tokens_per_s" in row:
                row["mfu"] = row["tokens_per_s"] * 4 * matmul_params / peak_flops()
            results.append(row)
            print(json.dumps(row), flush=True)
            del model
            # Trainer registers the embedding with bitsandbytes' process-wide 8-bit optimizer manager, which would
            # keep it alive into the next variant (seen: each later variant's peak grew by one embedding).
            release_optimizer_overrides()
            gc.collect()
            torch.cuda.empty_cache()
    (out / "gpu_train.json").write_text(json.dumps(results, indent=1))
    for r in results:
        if "profile" in r:
            prof = r["profile"]
            print(f"\nprofiled step, {r['model']} {r['variant']}: {prof['wall_s']} s wall for {prof['tokens']} tokens, "
                  f"GPU busy {prof['gpu_busy_s']} s ({prof['gpu_busy_share']:.0%}), {prof['kernel_launches']} launches")
            for name, count, ms in prof.get("kinds_ms", []):
                print(f"  kind {ms:9.1f} ms {count:6d}x  {name}")
            for name, count, ms in prof["top_kernels_ms"]:
                print(f"  gpu {ms:9.1f} ms {count:6d}x  {name}")
            for name, count, ms in prof["top_host_ms"]:
                print(f"  cpu {ms:9.1f} ms {count:6d}x  {name}")
            if "idle" in prof:
                print_gaps(prof["idle"])
                print_self_times(prof["idle"].get("host_by_function", []))
    print(f"\n{'model':14} {'variant':13} {'tok/s':>9} {'x base':>6} {'MFU':>6} {'peak GB':>8} {'model GB':>8} "
          f"{'leftover':>8} {'first-step loss':>15} {'loss @ baseline tokens':>22}")
    base_speed = {r["model"]: r["tokens_per_s"] for r in results if r["variant"] == "baseline" and "error" not in r}
    for r in results:
        if "error" in r:
            print(f"{r['model']:14} {r['variant']:13} ERROR {r['error'][:90]}")
            continue
        ratio = r["tokens_per_s"] / base_speed.get(r["model"], float("nan"))
        print(f"{r['model']:14} {r['variant']:13} {r['tokens_per_s']:9.0f} {ratio:6.2f} {r['mfu']:6.1%} "
              f"{r['peak_gb']:8.2f} {r['model_gb']:8.2f} {r['leftover_gb']:8.2f} {r['first_step_loss']:15.3f} "
              f"{r['loss_at_baseline_tokens']:22.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
