"""How long `talkalike eval` takes for N held-out persona turns on this CPU (perplexity + generation, tuned and base),
beside the plain transformers way (one `model.generate()` per context, perplexity from full logits).

Ours is `talkalike eval` itself (evaluate_run, every phase) on all N turns. The plain way is timed on a few turns
and scaled to N (on all N it would take hours). If the run's eval.jsonl has fewer than N persona turns, training rows are added (in a scratch copy
of the run folder), for timing only: the figures of that eval are not a held-out measurement.

    .venv/bin/python benchmarks/eval_cpu.py --home /tmp/h --run noa-demo --turns 500
    .venv/bin/python benchmarks/eval_cpu.py --home /tmp/h --run noa-demo --turns 500 --threads 1
"""

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

from talkalike.evaluate import evaluate
from talkalike.files import read_jsonl, write_jsonl
from talkalike.home import resolve_home, resolve_run
from talkalike.run import Run


def rows_with_turns(run_dir: Path, turns: int) -> list[dict]:
    """Held-out rows, topped up with training rows until they hold `turns` persona turns."""
    rows = read_jsonl(run_dir / "eval.jsonl")
    extra = read_jsonl(Run.open(run_dir).dataset / "train.jsonl")
    while len(evaluate.held_out_turns(rows)) < turns and extra:
        rows.append(extra.pop())
    return rows


def ours(twin, run_dir: Path, rows: list[dict], config, home: Path) -> dict:
    """Our path: `talkalike eval` itself (evaluate_run) on a copy of the run whose eval.jsonl holds `rows`; returns
    its phase timings (perplexity, continuously batched generation, metrics, canaries)."""
    import shutil
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / run_dir.name
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("chats", "export-*"))
        write_jsonl(copy / "eval.jsonl", rows)
        result = evaluate.evaluate_run(copy, home, config, twin=twin)
    return result["timings"] | {"threads": torch.get_num_threads(), "headline": evaluate.headline_lines(result)}


def plain(twin, rows, turns, config, sample: int) -> dict:
    """The plain transformers way on `sample` turns: generate() per context, full-logits loss per conversation."""
    import torch

    from talkalike.decode.config import with_overrides
    from talkalike.decode.turns import fit_prompt
    from talkalike.template import render_sample

    subset = turns[:sample]
    generation = with_overrides(twin.defaults, max_new_tokens=config.max_new_tokens,
                                max_context_tokens=config.max_context_tokens)
    times = {"perplexity": 0.0, "generation": 0.0}
    for use_adapter in (False, True):
        switch = twin.model.disable_adapter() if not use_adapter else contextlib.nullcontext()
        with switch, torch.inference_mode():
            started = time.perf_counter()
            for r in sorted({t.row for t in subset}):
                rendered = render_sample(rows[r]["messages"], twin.tokenizer, twin.layout)
                twin.model(input_ids=torch.tensor([rendered.input_ids]))
            times["perplexity"] += time.perf_counter() - started
            started = time.perf_counter()
            for turn in subset:
                ids = torch.tensor([fit_prompt(twin, turn.context, generation)])
                twin.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=generation.temperature,
                                    repetition_penalty=generation.repetition_penalty,
                                    max_new_tokens=generation.max_new_tokens)
            times["generation"] += time.perf_counter() - started
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home")
    parser.add_argument("--run", required=True)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--plain-sample", type=int, default=6, help="turns the plain way is timed on")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per physical core, or one "
                        "where timed steps run faster with one)")
    parser.add_argument("--canary", action="append", help="a planted secret to check, as `talkalike eval --canary`")
    args = parser.parse_args()

    from talkalike.decode.twin import Twin

    home = resolve_home(args.home)
    run_dir = resolve_run(home, args.run)
    config = evaluate.EvalConfig(limit=args.turns, threads=args.threads, canaries=tuple(args.canary or ()))
    started = time.perf_counter()
    twin = Twin.from_run(run_dir, home)
    load = time.perf_counter() - started
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = rows_with_turns(run_dir, args.turns)
    turns = evaluate.held_out_turns(rows, args.turns)
    ours_times = ours(twin, run_dir, rows, config, home)
    plain_times = plain(twin, rows, turns, config, args.plain_sample)
    scale = len(turns) / args.plain_sample

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {ours_times['threads']} torch threads at the end "
          f"(chosen by timing unless --threads), "
          f"torch {torch.__version__}, dtype {next(twin.model.parameters()).dtype}")
    print(f"run: {run_dir.name}, {len(turns)} persona turns, max_new_tokens {config.max_new_tokens}, "
          f"context {config.max_context_tokens} tokens, batch {config.batch_size}, model load {load:.1f} s")
    print(f"{'path':<42}{'perplexity s':>14}{'generation s':>14}{'total s':>10}")
    total = ours_times["perplexity"] + ours_times["generation"]
    print(f"{'talkalike eval (continuous batching)':<42}{ours_times['perplexity']:>14.1f}"
          f"{ours_times['generation']:>14.1f}{total:>10.1f}")
    p, g = plain_times["perplexity"] * scale, plain_times["generation"] * scale
    print(f"{'transformers generate(), one at a time *':<42}{p:>14.1f}{g:>14.1f}{p + g:>10.1f}")
    print(f"* timed on {args.plain_sample} turns and scaled to {len(turns)}")
    print("talkalike eval, every phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ours_times.items()
                                                        if isinstance(v, float)) + f"; model load {load:.1f}")
    print("\n".join(ours_times["headline"]))
    print(f"target: under 600 s for 500 turns -> {'met' if total < 600 * len(turns) / 500 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
