"""The fidelity measures on both bundled samples, tuned against base, with the demo's default training.

The demo trains and evaluates the Noa chat only; this runs the same commands on the group chat too (another language
pair, chat shape and persona), so that no default is tuned to one chat, and prints one table: each headline measure
for both samples, tuned vs base, and whether tuned is closer to the persona.

    python benchmarks/fidelity_samples.py --home DIR [--sample group] [--turns 100]

A run that already exists in DIR is evaluated again without retraining (delete it to retrain).
"""

import argparse
import json
from pathlib import Path

from talkalike.cli import main as cli
from talkalike.evaluate.evaluate import EVAL_FILE
from talkalike.home import resolve_home, runs_dir
from talkalike.run import Run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SAMPLES = {  # name -> (chat export, persona, run)
    "noa": (EXAMPLES / "WhatsApp Chat with Noa.txt", "Noa", "noa-sample"),
    "group": (EXAMPLES / "WhatsApp Chat with Amigos del Barrio.txt", "Lucía", "group-sample"),
}


def run_sample(home: Path, name: str, turns: int) -> dict:
    """Import, dataset, train (unless the run exists) and eval one sample; returns its eval.json."""
    chat, persona, run = SAMPLES[name]
    common = ["--home", str(home)]
    dataset = home / "datasets" / run
    facts = chat.with_suffix(".facts.jsonl")
    for argv in (["import", str(chat)], ["dataset", "--me", persona, "--out", str(dataset)]):
        if cli(common + argv):
            raise SystemExit(f"talkalike {' '.join(argv)} failed")
    if not Run.exists(runs_dir(home) / run) and cli(common + ["train", str(dataset), "--name", run]):
        raise SystemExit(f"training {run} failed")
    if cli(common + ["eval", run, "--limit", str(turns), "--facts", str(facts)]):
        raise SystemExit(f"eval of {run} failed")
    return json.loads((runs_dir(home) / run / EVAL_FILE).read_text(encoding="utf-8"))


def rows(result: dict) -> list[tuple[str, float, float, float | None, bool]]:
    """(measure, tuned, base, persona or None, tuned is better) for each headline measure of one eval.json."""
    head = result["headline"]
    out = [
        ("R@1 of 10", head["next-reply ranking"]["tuned"], head["next-reply ranking"]["base"], None, None),
        ("real-vs-generated AUC (lower is better)", result["real vs generated auc"]["tuned"],
         result["real vs generated auc"]["base"], 0.5, None),
    ]
    identification = result["context identification"]
    out.append(("context identification, share of real", identification["tuned share of real"],
                identification["base share of real"], 1.0, None))
    if "facts" in result:
        out.append(("facts recalled", result["facts"]["tuned"]["recalled"], result["facts"]["base"]["recalled"], None,
                    None))
    gaps = {name: {g["measure"]: g for g in result["style gaps"][name]} for name in ("tuned", "base")}
    for measure, gap in gaps["tuned"].items():
        out.append((measure, gap["generated"], gaps["base"][measure]["generated"], gap["persona"], None))
    table = []
    for measure, tuned, base, persona, _ in out:
        if persona is None:
            better = tuned > base
        elif measure.startswith("real-vs"):
            better = tuned < base
        else:
            better = abs(tuned - persona) < abs(base - persona)
        table.append((measure, tuned, base, persona, better))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data folder for both runs (default: the usual one)")
    parser.add_argument("--sample", choices=sorted(SAMPLES), action="append", help="only this sample (repeatable)")
    parser.add_argument("--turns", type=int, default=100, help="held-out turns evaluated per sample")
    args = parser.parse_args()
    home = resolve_home(args.home)
    for name in args.sample or list(SAMPLES):
        result = run_sample(home, name, args.turns)
        print(f"\n### {name} ({result['held-out turns']} held-out turns)\n")
        print("| measure | tuned | base | persona | tuned closer |")
        print("|---|---:|---:|---:|:---:|")
        for measure, tuned, base, persona, better in rows(result):
            persona_text = "" if persona is None else f"{persona:.2f}"
            print(f"| {measure} | {tuned:.2f} | {base:.2f} | {persona_text} | {'yes' if better else 'no'} |")


if __name__ == "__main__":
    main()
