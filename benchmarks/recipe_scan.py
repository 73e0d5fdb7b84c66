"""Which training recipe makes the twin follow the conversation: the fidelity measures per recipe, in one table.

Each variant is the demo's `default` recipe with one setting changed (epochs, learning rate, LoRA rank, the history
window carried into each sample, recalled memories, preference tuning after the supervised passes). Every variant
trains the same sample from the same seed and is evaluated as the demo evaluates (`talkalike eval --facts`), tuned
against base, so the rows differ by that one setting.
Defaults are picked by these measures, not by the loss alone (issue: "Recipe").

    python benchmarks/recipe_scan.py --home DIR [--sample noa] [--variants default epochs2 ...] [--turns 100]

A run that already exists in DIR is evaluated again without retraining. On a CUDA GPU the base trains in bf16 (the
demo on a CPU trains in fp32); on 2 CPU cores each variant costs about as long as the demo.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from fidelity_samples import SAMPLES

from talkalike.cli import main as cli
from talkalike.evaluate.evaluate import EVAL_FILE, EvalConfig, evaluate_run
from talkalike.home import resolve_home, runs_dir
from talkalike.run import Run
from talkalike.train import recipe as recipes
from talkalike.train.trainer import train

# name -> (recipe fields changed, `talkalike dataset` flags changed)
VARIANTS = {
    "default": ({}, []),
    "epochs2": ({"epochs": 2.0}, []),
    "epochs3": ({"epochs": 3.0}, []),
    "lr5e-4": ({"learning_rate": 5e-4}, []),
    "lr1e-3": ({"learning_rate": 1e-3}, []),
    "r4": ({"lora_r": 4, "lora_alpha": 8}, []),
    "r64": ({"lora_r": 64, "lora_alpha": 128}, []),
    "window512": ({}, ["--max-tokens", "512"]),
    "memories0": ({"memories": 0}, []),
    # The default on a GPU ends with preference tuning (train/preference.py: DPO with the real reply's own loss, on
    # every answering persona turn; Noa: 921 pairs); these change or drop it.
    "no-preference": ({"preference_pairs": 0}, []),
    "dpo-alone": ({"preference_nll": 0.0}, []),
    "dpo-lr2e-4": ({"preference_lr": 2e-4}, []),
    "dpo-lr1e-5": ({"preference_lr": 1e-5}, []),
    # half the pairs reject the base model's own reply to the history instead of another conversation's
    "dpo-base-half": ({"preference_base_share": 0.5}, []),
    # The LoRA rank of the supervised passes alone (what a CPU trains), against `no-preference` (rank 16)
    "r4-supervised": ({"lora_r": 4, "lora_alpha": 8, "preference_pairs": 0}, []),
    "r64-supervised": ({"lora_r": 64, "lora_alpha": 128, "preference_pairs": 0}, []),
}
DEFAULT = recipes.PRESETS["default"]


def dataset_for(home: Path, sample: str, flags: list[str]) -> Path:
    """Import the sample and build its dataset (once per distinct set of dataset flags)."""
    chat, persona, _ = SAMPLES[sample]
    out = home / "datasets" / "-".join([sample, *[f.strip("-") for f in flags]])
    if not (out / "train.jsonl").is_file():
        for argv in (["import", str(chat)], ["dataset", "--me", persona, "--out", str(out), *flags]):
            if cli(["--home", str(home), *argv]):
                raise SystemExit(f"talkalike {' '.join(argv)} failed")
    return out


def run_variant(home: Path, sample: str, name: str, turns: int, rank_turns: int, max_steps: int | None = None,
                fact_samples: int = EvalConfig.fact_samples) -> tuple[dict, dict]:
    """Train (unless the run exists) and evaluate one variant; returns (eval.json, timings)."""
    fields, flags = VARIANTS[name]
    dataset = dataset_for(home, sample, flags)
    run = f"{sample}-{name}"
    timings = {}
    if not Run.exists(runs_dir(home) / run):
        recipes.PRESETS["default"] = dataclasses.replace(DEFAULT, **fields)
        try:
            start = time.perf_counter()
            # A variant that sets the preference stage asks for it explicitly, so that it runs on a CPU too (where
            # the default skips it); the default itself is left to the machine, as `talkalike train` leaves it.
            preference = fields.get("preference_pairs", DEFAULT.preference_pairs) \
                if any(key.startswith("preference") for key in fields) else None
            train(dataset, home, preset="default", name=run, progress=False, max_steps=max_steps,
                  preference_pairs=preference)
            timings["train s"] = time.perf_counter() - start
        finally:
            recipes.PRESETS["default"] = DEFAULT
    chat, _, _ = SAMPLES[sample]
    start = time.perf_counter()
    evaluate_run(runs_dir(home) / run, home, EvalConfig(limit=turns, rank_turns=rank_turns, identify_turns=rank_turns,
                                                         fact_samples=fact_samples,
                                                         facts=str(chat.with_suffix(".facts.jsonl"))))
    timings["eval s"] = time.perf_counter() - start
    return json.loads((runs_dir(home) / run / EVAL_FILE).read_text(encoding="utf-8")), timings


def summary(result: dict, run_dir: Path) -> dict:
    """The measures the recipe is picked by, tuned and base, from one run's eval.json and run.json."""
    head = result["headline"]
    gaps = {g["measure"]: g for g in result["style gaps"]["tuned"]}
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return {
        "R@1": (head["next-reply ranking"]["tuned"], head["next-reply ranking"]["base"]),
        "AUC": (result["real vs generated auc"]["tuned"], result["real vs generated auc"]["base"]),
        "context id / real": (result["context identification"]["tuned share of real"],
                              result["context identification"]["base share of real"]),
        "facts": (head["facts recalled"]["tuned"], head["facts recalled"]["base"]) if "facts recalled" in head
        else (float("nan"), float("nan")),
        "style distance": (head["style distance"]["tuned"], head["style distance"]["base"]),
        "perplexity": (head["perplexity"]["tuned"], head["perplexity"]["base"]),
        "eval loss": run.get("best_eval_loss"),
        "steps": run.get("steps"),
        "gaps": {m: (g["generated"], g["persona"]) for m, g in gaps.items()},
        "preference": run.get("preference"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data folder for the runs (default: the usual one)")
    parser.add_argument("--sample", choices=sorted(SAMPLES), default="noa")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--turns", type=int, default=100, help="held-out turns evaluated per run")
    parser.add_argument("--rank-turns", type=int, default=100, help="turns ranked for R@1 and context identification")
    parser.add_argument("--fact-samples", type=int, default=EvalConfig.fact_samples, help="replies per fact question")
    parser.add_argument("--max-steps", type=int, help="stop each training after this many steps (a smoke test)")
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args()
    home = resolve_home(args.home)
    rows = {}
    for name in args.variants:
        result, timings = run_variant(home, args.sample, name, args.turns, args.rank_turns, args.max_steps,
                                       args.fact_samples)
        rows[name] = summary(result, runs_dir(home) / f"{args.sample}-{name}") | timings
        print(f"{name}: {json.dumps(rows[name], default=str)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    measures = ["R@1", "AUC", "context id / real", "facts", "style distance", "perplexity"]
    print(f"\n### {args.sample}: tuned (base)\n")
    print("| variant | " + " | ".join(measures) + " | eval loss | furthest style gaps, tuned vs persona | train s |")
    print("|---|" + "---:|" * (len(measures) + 1) + "---|---:|")
    for name, row in rows.items():
        cells = [f"{row[m][0]:.2f} ({row[m][1]:.2f})" for m in measures]
        gaps = sorted(row["gaps"].items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]) / max(abs(kv[1][1]), 1e-9))[:3]
        gap_text = "; ".join(f"{m} {g:.2f} vs {p:.2f}" for m, (g, p) in gaps)
        loss = row["eval loss"] if row["eval loss"] is not None else float("nan")
        print(f"| {name} | " + " | ".join(cells) + f" | {loss:.3f} | {gap_text} | {row.get('train s', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
