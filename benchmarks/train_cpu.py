"""CPU training speed: talkalike's path against a plain transformers Trainer + PEFT run, side by side.

    .venv/bin/python benchmarks/train_cpu.py                 # both variants on 32 sample-chat conversations
    .venv/bin/python benchmarks/train_cpu.py --samples 64 --demo   # also time the demo's full training step

Both variants train the embedded Gemma 3 270M with the same LoRA (the `default` preset's), the same learning rate and
the same persona-only labels on the same conversations, one epoch, each in its own process (so peak memory is its own):
- baseline: `transformers.Trainer`, batch 2 x accumulation 4 padded to the longest sample, gradient checkpointing (the
  original recipe's shape), full-vocabulary logits and the model's own loss;
- ours: `talkalike.train.trainer.make_trainer` with the `default` preset: BFD packing with per-sample position ids, the LM
  head only on labelled positions, no gradient checkpointing, fp32.
Attribution rows: baseline-nockpt (no checkpointing), baseline-bf16 and ours-bf16 (bf16 weights + autocast),
ours-dense-mask (ours with SDPA's dense mask over each packed row instead of attention per packed sample),
ours-peft-rows (ours with peft's trained token rows, which copy the whole embedding table at every forward).
Tokens/s counts real (non-padding) tokens. The final loss must agree within noise: a speed-up that changes the maths
does not count. `--demo` runs `talkalike train` on the whole sample chat with the defaults and reports its wall time.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "WhatsApp Chat with Noa.txt"


def build_dataset(home: Path) -> Path:
    """The sample chat imported and turned into a dataset (persona Noa), cached under the bench home."""
    from talkalike.cli import main

    folder = home / "noa-ds"
    if not (folder / "train.jsonl").is_file():
        assert main(["--home", str(home), "import", str(SAMPLE)]) == 0
        assert main(["--home", str(home), "dataset", "--me", "Noa", "--out", str(folder)]) == 0
    return folder


def records(home: Path, count: int) -> tuple[list[dict], object]:
    """The first `count` training samples rendered for the embedded model, with persona masks."""
    from talkalike.model import load_tokenizer
    from talkalike.template import chat_template
    from talkalike.train.recipe import PRESETS
    from talkalike.train.trainer import read_dataset, render_rows

    train_rows, _, _ = read_dataset(build_dataset(home))
    tokenizer = load_tokenizer(None, home)
    tokenizer.chat_template = chat_template(tokenizer, "chat")
    rendered, _ = render_rows(train_rows[:count], tokenizer, "chat", False, PRESETS["default"].max_length)
    return rendered, tokenizer


def run_variant(variant: str, home: Path, count: int, profile: bool = False) -> dict:
    """Train one epoch over the samples with one variant; returns its numbers (`profile`: and where its operator
    time went, the ten costliest operators' seconds)."""
    import resource
    from dataclasses import replace

    import torch

    from talkalike.model import load_base
    from talkalike.train.recipe import PRESETS, resolve_recipe
    from talkalike.train.trainer import apply_lora, make_trainer

    samples, tokenizer = records(home, count)
    if variant == "ours-dense-mask":  # attribution: ours with SDPA's dense mask over each packed row, as before
        from talkalike.train import packed

        packed.use_packed_attention = lambda model: None
    if variant == "ours-peft-rows":  # attribution: ours with peft's own trained token rows (whole-table copies)
        import talkalike.model

        talkalike.model.token_rows_in_place = lambda model: 0
    if variant in ("ours", "ours-dense-mask", "ours-peft-rows"):  # exactly what `talkalike train` picks here
        recipe, _ = resolve_recipe("default", cuda=False, epochs=1.0, early_stopping_patience=0)
        bf16 = recipe.bf16
    else:  # attribution rows name their dtype; the baseline computes in fp32, as a plain CPU run does
        bf16 = variant.endswith("-bf16")
        recipe = replace(PRESETS["default"], epochs=1.0, early_stopping_patience=0, bf16=bf16)
    model = load_base(None, home, dtype=torch.bfloat16 if bf16 else torch.float32)
    tokens = sum(len(s["input_ids"]) for s in samples)
    trained = sum(sum(s["assistant_masks"]) for s in samples)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    from talkalike.template import turn_end_ids

    ends = turn_end_ids(tokenizer)  # both variants train the same adapter, turn-end token rows included
    if variant.startswith("ours"):
        trainer = make_trainer(model, tokenizer, samples, [], recipe, out, turn_end_ids=ends)
    else:
        from datasets import Dataset
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        rows = [{"input_ids": s["input_ids"], "attention_mask": [1] * len(s["input_ids"]),
                 "labels": [t if m else -100 for t, m in zip(s["input_ids"], s["assistant_masks"], strict=True)]}
                for s in samples]
        args = TrainingArguments(
            output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=2, gradient_accumulation_steps=4,
            gradient_checkpointing=variant != "baseline-nockpt", learning_rate=recipe.learning_rate, bf16=bf16,
            warmup_steps=recipe.warmup_steps, weight_decay=recipe.weight_decay, optim="adamw_torch",
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=recipe.seed,
            dataloader_pin_memory=False, use_cpu=True)
        trainer = Trainer(model=apply_lora(model, recipe, ends), args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    torch.manual_seed(0)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as recorded:
            result = trainer.train()
        ops = sorted(recorded.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        top = {e.key: round(e.self_cpu_time_total / 1e6, 2) for e in ops[:10]}
    else:
        result = trainer.train()
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    # CPU time is the fairer measure on a shared machine: other jobs steal wall time, not our CPU seconds
    cpu_seconds = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"variant": variant, "samples": len(samples), "tokens": tokens, "trained_tokens": trained,
            "steps": trainer.state.global_step, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu_seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "trained_tokens_per_s": round(trained / seconds, 1),
            "train_loss": round(result.training_loss, 4), "last_loss": round(losses[-1], 4) if losses else None,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)} | (
        {"operator_s": round(total / 1e6, 1), "top_operators_s": top} if profile else {})


def run_demo(home: Path) -> dict:
    """`talkalike train` on the whole sample chat with the defaults, timed end to end (model load included)."""
    dataset = build_dataset(home)
    name = f"bench-demo-{int(time.time())}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "talkalike", "--home", str(home), "train", str(dataset), "--name", name],
                   check=True)
    seconds = time.perf_counter() - start
    from talkalike.run import Run

    info = Run.open(home / "runs" / name).info
    return {"variant": "demo train (full sample chat)", "seconds": round(seconds, 1), "steps": info["steps"],
            "epochs": info["epochs_done"], "train_loss": info["train_loss"], "best_eval_loss": info["best_eval_loss"],
            "tokens_trained": info["tokens_trained"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="conversations per variant")
    parser.add_argument("--variants", default="baseline,ours",
                        help="comma list of baseline, baseline-nockpt, baseline-bf16, ours, ours-fp32, ours-bf16")
    parser.add_argument("--home", default=str(ROOT / ".bench" / "train-home"), help="cache of model and dataset")
    parser.add_argument("--demo", action="store_true", help="also time the demo's whole training step")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per variant (0: torch's default); 1 keeps a shared machine's numbers steady")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each variant's training (torch.profiler): operator seconds, costliest ten")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    if args.variant:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_variant(args.variant, home, args.samples, args.profile)))
        return
    build_dataset(home)
    results = []
    for variant in args.variants.split(","):
        line = subprocess.run([sys.executable, __file__, "--variant", variant, "--samples", str(args.samples),
                               "--threads", str(args.threads), *(["--profile"] if args.profile else []),
                               "--home", str(home)], check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    base = next((r for r in results if r["variant"] == "baseline"), results[0])
    print(f"machine: {os.cpu_count()} CPUs, torch threads {args.threads or 'default'}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| variant | samples | tokens | steps | wall s | tokens/s | CPU s | tokens/CPU-s | speed-up (wall / CPU) "
          "| train loss | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['samples']} | {r['tokens']} | {r['steps']} | {r['seconds']} | {r['tokens_per_s']} "
              f"| {r['cpu_seconds']} | {r['tokens_per_cpu_s']} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x / "
              f"{r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x | {r['train_loss']} | {r['peak_rss_gb']} |")
    for r in results:
        if "top_operators_s" in r:
            print(f"\n{r['variant']}: {r['operator_s']} s in operators; costliest: " + ", ".join(
                f"{name} {sec} s ({sec / r['operator_s']:.0%})" for name, sec in r["top_operators_s"].items()))
    if args.demo:
        print(json.dumps(run_demo(home)))


if __name__ == "__main__":
    main()
