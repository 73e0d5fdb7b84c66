"""How long `talkalike eval` takes for N held-out persona turns on this CPU (perplexity + generation, tuned and base),
beside the plain transformers way (one `model.generate()` per context, perplexity from full logits).

The plain way is timed on a few turns and scaled to N (running it on all N would take hours); ours runs on all N.
If the run's eval.jsonl has fewer than N persona turns, training rows are added for timing only.

    .venv/bin/python benchmarks/eval_cpu.py --home /tmp/h --run noa-demo --turns 500
    .venv/bin/python benchmarks/eval_cpu.py --home /tmp/h --run noa-demo --turns 500 --threads 1
"""

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

from talkalike import evaluate
from talkalike.home import resolve_home, resolve_run


def rows_with_turns(run_dir: Path, run_info: dict, turns: int) -> list[dict]:
    """Held-out rows, topped up with training rows until they hold `turns` persona turns."""
    rows = evaluate.read_jsonl(run_dir / "eval.jsonl")
    extra = evaluate.read_jsonl(Path(run_info["dataset"]) / "train.jsonl")
    while len(evaluate.held_out_turns(rows)) < turns and extra:
        rows.append(extra.pop())
    return rows


def ours(twin, rows, turns, config) -> dict:
    """Our path: batched perplexity and batched generation, base then tuned (adapter merged)."""
    from talkalike.generate import with_overrides

    evaluate._prepare_for_eval(twin, config)
    generation = with_overrides(twin.defaults, max_new_tokens=config.max_new_tokens,
                                max_context_tokens=config.max_context_tokens, seed=config.seed)
    times = {"perplexity": 0.0, "generation": 0.0}
    tokens = 0
    for name, use_adapter in (("base", False), ("tuned", True)):
        with evaluate._merged(twin, use_adapter):
            started = time.perf_counter()
            evaluate.perplexity(twin, rows, turns, use_adapter=use_adapter, batch_size=8)
            times["perplexity"] += time.perf_counter() - started
            started = time.perf_counter()
            replies = evaluate._generate(twin, [t.context for t in turns], generation, use_adapter,
                                         config.batch_size, name)
            times["generation"] += time.perf_counter() - started
            tokens += sum(len(twin.tokenizer.encode("\n".join(r), add_special_tokens=False)) for r in replies)
    times["generated tokens"] = tokens
    return times


def plain(twin, rows, turns, config, sample: int) -> dict:
    """The plain transformers way on `sample` turns: generate() per context, full-logits loss per conversation."""
    import torch

    from talkalike.generate import fit_prompt, with_overrides
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
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per physical core)")
    args = parser.parse_args()

    from talkalike.generate import Twin

    home = resolve_home(args.home)
    run_dir = resolve_run(home, args.run)
    run_info = json.loads((run_dir / "run.json").read_text())
    config = evaluate.EvalConfig(limit=args.turns, threads=args.threads)
    started = time.perf_counter()
    twin = Twin.from_run(run_dir, home)
    load = time.perf_counter() - started
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = rows_with_turns(run_dir, run_info, args.turns)
    turns = evaluate.held_out_turns(rows, args.turns)
    ours_times = ours(twin, rows, turns, config)
    plain_times = plain(twin, rows, turns, config, args.plain_sample)
    scale = len(turns) / args.plain_sample

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, dtype {next(twin.model.parameters()).dtype}")
    print(f"run: {run_dir.name}, {len(turns)} persona turns, max_new_tokens {config.max_new_tokens}, "
          f"context {config.max_context_tokens} tokens, batch {config.batch_size}, model load {load:.1f} s")
    print(f"{'path':<42}{'perplexity s':>14}{'generation s':>14}{'total s':>10}")
    total = ours_times["perplexity"] + ours_times["generation"]
    print(f"{'talkalike eval (batched, merged adapter)':<42}{ours_times['perplexity']:>14.1f}"
          f"{ours_times['generation']:>14.1f}{total:>10.1f}")
    p, g = plain_times["perplexity"] * scale, plain_times["generation"] * scale
    print(f"{'transformers generate(), one at a time *':<42}{p:>14.1f}{g:>14.1f}{p + g:>10.1f}")
    print(f"* timed on {args.plain_sample} turns and scaled to {len(turns)}; generated tokens (ours, both models): "
          f"{ours_times['generated tokens']:,}")
    print(f"target: under 600 s for 500 turns -> {'met' if total < 600 * len(turns) / 500 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
