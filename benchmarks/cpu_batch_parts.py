"""What serve's batch costs on a CPU, part by part: eight prompts prefilled together against one, and a decode step
of eight rows against one, on a trained run as `serve` loads it (transformers + peft, fp32, adapter on).

    TALKALIKE_MODELS=.cache/models .venv/bin/python benchmarks/cpu_batch_parts.py --home HOME --run noa-demo

The prompts are serve_concurrency.py's first eight, fitted as a chat fits them (contact line, recalled memories).
Prints the medians of six steps and of two prefills each way: they bound what batching can gain for short replies.
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(work, *args):
    """(seconds, result) of work(*args)."""
    start = time.perf_counter()
    result = work(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="data folder holding the run")
    parser.add_argument("--run", default="noa-demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    from serve_concurrency import PROMPTS

    from talkalike.decode.batch import Batch
    from talkalike.decode.turns import fit_prompt
    from talkalike.decode.twin import Twin

    torch.set_num_threads(args.threads)
    home = Path(args.home)
    twin = Twin.from_run(home / "runs" / args.run, home)
    config = dataclasses.replace(twin.defaults, max_new_tokens=24)
    prompts = [fit_prompt(twin, [{"role": "user", "content": p}], config) for p in PROMPTS[:8]]
    batch = Batch(twin, dataclasses.replace(config, max_new_tokens=0, max_context_tokens=500), 8, temperatures=[])
    times: dict[str, list[float]] = {"prefill 8": [], "prefill 1": [], "step 8": [], "step 1": []}
    with torch.inference_mode(), twin.adapter(True):
        for _ in range(2):
            seconds, rows = timed(batch.prefill, list(range(8)), prompts)
            times["prefill 8"].append(seconds)
            seconds, one = timed(batch.prefill, [0], prompts[:1])
            times["prefill 1"].append(seconds)
            for name, group in (("step 8", rows), ("step 1", one)):
                for _ in range(6):
                    group.tokens = [[5] for _ in group.ids]
                    times[name].append(timed(lambda g: (batch.logits(g), batch.step(g)), group)[0])
    real = sum(map(len, prompts))
    print(f"{args.run}, {args.threads} threads; prompt tokens {[len(p) for p in prompts]} ({real} real, "
          f"{8 * max(map(len, prompts))} padded)")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
