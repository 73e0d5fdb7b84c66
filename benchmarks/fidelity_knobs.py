"""What moves the fidelity measures on one trained run: prompt fitting and sampling settings, side by side.

Training is the slow part on a CPU, so this takes a trained run and varies only what is decided at reply time:

- ranking rows: R@1 of 10 (tuned and base) under each prompt setting (recalled exchanges, context window);
- sampling rows: the tuned twin's replies to the held-out turns under each setting, with the style measures that
  eval's headline reports (emoji, Hebrew, messages a turn, 3-word repeats) against the persona's real replies, and the
  real-vs-generated AUC.

    python benchmarks/fidelity_knobs.py RUN --home DIR [--turns 100] [--rank-turns 50] [--rank-tokens 16]

Prints one table per kind; every row uses the same held-out turns, seed and distractors.
"""

import argparse
import dataclasses
import time

from talkalike.decode import turns as turns_module
from talkalike.decode.batch import decode_many
from talkalike.decode.config import with_overrides
from talkalike.decode.twin import Twin
from talkalike.evaluate import fidelity, metrics
from talkalike.evaluate.evaluate import EvalConfig, held_out_turns, turn_text
from talkalike.files import read_jsonl
from talkalike.home import resolve_home, resolve_run

RANKING = {  # name -> GenerationConfig overrides for the scorer's prompt (recent_turns: turns.RECENT_TURNS)
    "eval default (160 tokens, 3 memories)": {},
    "memories before the latest exchange": {"recent_turns": 1},
    "no memories": {"memories": 0},
    "320 tokens": {"max_context_tokens": 320},
    "320 tokens, no memories": {"max_context_tokens": 320, "memories": 0},
}
SAMPLING = {  # name -> GenerationConfig overrides for generation
    "defaults": {},
    "persona's own tokens only (own_words on)": {"own_words": True},
    "no 3-token no-repeat rule": {"no_repeat_ngram": 0},
    "temperature 0.8": {"temperature": 0.8},
    "temperature 1.0": {"temperature": 1.0},
    "temperature 1.0, top-p 0.9": {"temperature": 1.0, "top_p": 0.9},
    "no memories": {"memories": 0},
    "language steering": {"steer_language": True},
    "language steering, temperature 0.8": {"steer_language": True, "temperature": 0.8},
    "habits at the sampling temperature": {"keep_habits": False},
}


def rank(twin, turns, pool, overrides: dict, config: EvalConfig) -> tuple[float, float]:
    """R@1 (tuned, base) with the scorer's prompt built under `overrides`."""
    defaults, recent = twin.defaults, turns_module.RECENT_TURNS
    overrides = dict(overrides)
    turns_module.RECENT_TURNS = overrides.pop("recent_turns", recent)
    twin.defaults = with_overrides(defaults, **overrides)
    try:
        context = overrides.get("max_context_tokens", config.max_context_tokens)
        picked = fidelity.spread(turns, config.rank_turns)
        result = []
        for use_adapter in (True, False):
            score = fidelity.model_scorer(twin, use_adapter, context, config.rank_tokens)
            result.append(fidelity.next_reply_ranking(picked, score, pool=pool, seed=config.seed)["r@1"])
        return result[0], result[1]
    finally:
        twin.defaults, turns_module.RECENT_TURNS = defaults, recent


def style_row(real, replies) -> dict:
    """The headline's style measures of `replies` and the real-vs-generated AUC."""
    values = {name: value(replies) for name, (value, _, _) in metrics.GAP_MEASURES.items()}
    values["AUC"] = metrics.real_vs_generated_auc([turn_text(r) for r in real], [turn_text(r) for r in replies])
    values["style distance"] = metrics.style_distance(replies, real)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--home")
    parser.add_argument("--turns", type=int, default=100, help="held-out turns for the sampling rows")
    parser.add_argument("--rank-turns", type=int, default=50, help="held-out turns ranked for R@1")
    parser.add_argument("--rank-tokens", type=int, default=EvalConfig.rank_tokens,
                        help="scored tokens per candidate (the first ones of the turn)")
    parser.add_argument("--only", choices=("ranking", "sampling"), help="one kind of rows only")
    parser.add_argument("--sampling", nargs="+", choices=list(SAMPLING), metavar="ROW",
                        help="sampling rows to run (default: all)")
    args = parser.parse_args()
    home = resolve_home(args.home)
    run_dir = resolve_run(home, args.run)
    twin = Twin.from_run(run_dir, home)
    config = dataclasses.replace(EvalConfig(), rank_turns=args.rank_turns, rank_tokens=args.rank_tokens)
    turns = held_out_turns(read_jsonl(run_dir / "eval.jsonl"), args.turns)
    if args.only != "sampling":
        print(f"| prompt for ranking ({args.rank_turns} turns, {args.rank_tokens} tokens) | R@1 tuned | R@1 base "
              "| seconds |")
        print("|---|---:|---:|---:|")
        for name, overrides in RANKING.items():
            started = time.perf_counter()
            tuned, base = rank(twin, turns, turns, overrides, config)
            print(f"| {name} | {tuned:.0%} | {base:.0%} | {time.perf_counter() - started:.0f} |", flush=True)
    if args.only == "ranking":
        return
    real = [t.real for t in turns]
    rows = {"persona (real)": style_row(real, real)}
    columns = list(rows["persona (real)"])
    print(f"\n| replies ({len(turns)} turns) | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print("| persona (real) | " + " | ".join(f"{v:.2f}" for v in rows["persona (real)"].values()) + " |", flush=True)
    for name in args.sampling or list(SAMPLING):
        generation = with_overrides(twin.defaults, max_new_tokens=config.max_new_tokens,
                                    max_context_tokens=config.max_context_tokens, seed=config.seed)
        generation = dataclasses.replace(generation, **SAMPLING[name])
        values = style_row(real, decode_many(twin, [t.context for t in turns], generation, use_adapter=True,
                                             batch_size=config.batch_size))
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values.values()) + " |", flush=True)

if __name__ == "__main__":
    main()
