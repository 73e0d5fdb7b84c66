"""Preference tuning on a trained run's supervised twin, on this machine: its cost, and what it does to the fidelity
measures against the run's own eval.json (the same weights before it, the same seeded eval).

    python benchmarks/preference_cpu.py --home H --run noa-demo --pairs 150 [--dataset DIR] [--turns 100]

The run is copied to RUN-dpoN, its adapter tuned as `talkalike train --preference-pairs N` tunes it after the supervised
passes (train/preference.py, the run's recipe), and the copy evaluated as the demo evaluates (`talkalike eval --facts`
with the sample's facts and canaries). `--dataset` points a run whose dataset folder has moved at it.
"""

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from talkalike.evaluate.evaluate import EVAL_FILE, EvalConfig, evaluate_run
from talkalike.files import read_jsonl, write_json
from talkalike.home import resolve_home, runs_dir
from talkalike.memory import Memory
from talkalike.run import Run

KEEP = ("adapter", "tokenizer", "run.json", "dataset_stats.json", "eval.jsonl", "metrics.jsonl", "loss.png",
        "memory.db")
CANARIES = ("050-234-5678", "+44 7700 123456", "noa.levi.design@example.com")  # the Noa sample's planted secrets


def tune_copy(home: Path, source: Run, name: str, pairs: int, dataset: Path) -> tuple[Path, dict]:
    """A copy of `source` whose adapter went through preference tuning on `pairs` pairs; its report."""
    import torch
    from transformers import AutoTokenizer

    from talkalike.model import load_base, token_rows_in_place
    from talkalike.train import preference
    from talkalike.train.packed import use_packed_attention
    from talkalike.train.recipe import resolve_recipe
    from talkalike.train.trainer import apply_lora

    out = runs_dir(home) / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for item in KEEP:
        path = source.dir / item
        if path.is_dir():
            shutil.copytree(path, out / item)
        elif path.is_file():
            shutil.copyfile(path, out / item)
    info = source.info
    recipe, _ = resolve_recipe(info["preset"], torch.cuda.is_available(), preference_pairs=pairs)
    recipe = dataclasses.replace(recipe, memories=info["config"].get("memories", recipe.memories))
    model = load_base(source.base_id, home, dtype=torch.bfloat16 if recipe.bf16 else None)
    if not torch.cuda.is_available():
        use_packed_attention(model)  # as make_trainer does on a CPU
    model = apply_lora(model, recipe, adapter=source.adapter_dir)  # the trained adapter, trainable, as train does
    token_rows_in_place(model)
    tokenizer = AutoTokenizer.from_pretrained(str(source.tokenizer_dir))
    memory = Memory.open(dataset)
    train_rows, eval_rows = read_jsonl(dataset / "train.jsonl"), read_jsonl(dataset / "eval.jsonl")
    train_pairs = preference.preference_pairs(train_rows, memory, recipe.memories, pairs, recipe.seed)
    held_out = preference.preference_pairs(eval_rows, memory, recipe.memories, 50, recipe.seed)
    report = preference.tune(model, tokenizer, info["layout"], train_pairs, held_out, recipe)
    shutil.rmtree(out / "adapter")
    model.save_pretrained(str(out / "adapter"))
    write_json(out / "run.json", {**info, "name": name, "dataset": str(dataset), "preference": report,
                                  "config": {**info["config"], **recipe.as_dict()}})
    return out, report


def measures(result: dict) -> dict:
    head = result["headline"]
    gaps = {g["measure"]: g["generated"] for g in result["style gaps"]["tuned"]}
    return {
        "R@1": head["next-reply ranking"]["tuned"],
        "AUC": result["real vs generated auc"]["tuned"],
        "context id / real": result["context identification"]["tuned share of real"],
        "facts": head.get("facts recalled", {}).get("tuned"),
        "style distance": head["style distance"]["tuned"],
        "perplexity": head["perplexity"]["tuned"],
        **gaps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data folder holding the run (default: the usual one)")
    parser.add_argument("--run", default="noa-demo")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--dataset", help="the run's dataset folder, if it has moved")
    parser.add_argument("--turns", type=int, default=100, help="held-out turns evaluated")
    parser.add_argument("--facts", default="examples/WhatsApp Chat with Noa.facts.jsonl")
    args = parser.parse_args()
    home = resolve_home(args.home)
    source = Run.open(runs_dir(home) / args.run)
    dataset = Path(args.dataset).resolve() if args.dataset else source.dataset
    started = time.perf_counter()
    out, report = tune_copy(home, source, f"{args.run}-dpo{args.pairs}", args.pairs, dataset)
    tuned_s = time.perf_counter() - started
    print(json.dumps({"preference": report, "seconds": round(tuned_s, 1)}), flush=True)
    started = time.perf_counter()
    after = evaluate_run(out, home, EvalConfig(limit=args.turns, canaries=CANARIES, facts=args.facts))
    print(f"eval: {time.perf_counter() - started:.0f} s", flush=True)
    before_path = source.dir / EVAL_FILE
    rows = {"after": measures(after)}
    if before_path.is_file():
        rows = {"before (the run's eval.json)": measures(json.loads(before_path.read_text())), **rows}
    names = list(next(iter(rows.values())))
    print("\n| twin | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join("" if row.get(n) is None else f"{row[n]:.3g}" for n in names) + " |")


if __name__ == "__main__":
    main()
