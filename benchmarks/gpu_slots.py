"""Serve's batch step on one CUDA GPU (decode/slots.py): masked SDPA over every slot's whole cache against the Triton
attention that reads only each slot's own positions, for 1 and 8 live rows at short and long positions.

    .venv/bin/python benchmarks/gpu_slots.py [--live 1,8] [--positions 300,1500] [--steps 50] [--out DIR]
    .venv/bin/python benchmarks/gpu_slots.py --layers 2      # the mechanics in seconds

The model is benchmarks/gpu_decode.py's Mistral-7B-shaped one with random bf16 weights, in serve's Slots: 8 slots of
2,048 positions, the step compiled and replayed as a CUDA graph (each attention compiles once, about a minute at 32
layers). For each attention, live rows count and position: the live rows are prefilled to about the position (each
row 3 positions past the one before), stepped 3 times to warm up, then `--steps` calls of Slots.step are timed with
CUDA events, each read back before the next as serve's worker does (the host's work per step included), and the median
ms per step is kept. Idle slots are stepped too, at the last position, as serve steps them. Prints one markdown table
and writes gpu_slots.json under --out ($OUT by default).
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARMUP = 3  # steps before timing: the first compiles and captures the graph


def time_steps(slots, live: int, position: int, steps: int) -> list[float]:
    """ms of each of `steps` Slots.step calls, `live` rows prefilled to about `position`; their slots freed after."""
    import torch

    prompts = [[7 + k % 200 for k in range(position + 3 * row)] for row in range(live)]
    assert len(prompts[-1]) + WARMUP + steps < slots.max_len - 1, "positions past the slots' length"
    rows = slots.prefill(list(range(live)), prompts)
    rows.tokens = [[11] for _ in range(live)]  # the same token every step: what is fed does not change the time
    for _ in range(WARMUP):
        slots.step(rows)
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        slots.step(rows)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    rows.done = [True] * live
    slots.drop_finished(rows)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="sdpa,triton", help="Slots attentions to compare, in order")
    parser.add_argument("--live", default="1,8", help="live rows of the 8 slots")
    parser.add_argument("--positions", default="300,1500", help="about where the live rows' steps start")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--layers", type=int, default=32, help="fewer layers for a quick check of the mechanics")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-slots"))
    args = parser.parse_args()

    import gc

    import torch
    from gpu_decode import build_model

    from talkalike.decode.slots import MAX_LEN, Slots

    model = build_model(args.layers)
    device = torch.cuda.get_device_name()
    results = []
    with torch.inference_mode():
        for attention in args.attention.split(","):
            slots = Slots(model, rows=8, max_len=MAX_LEN, attention=attention)
            for live in map(int, args.live.split(",")):
                for position in map(int, args.positions.split(",")):
                    times = time_steps(slots, live, position, args.steps)
                    results.append({"attention": attention, "live": live, "position": position,
                                    "median_ms": statistics.median(times), "min_ms": min(times)})
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # partial results survive a limit
            del slots  # its caches and fused weights, before the next attention's
            gc.collect()
            torch.cuda.empty_cache()

    first = {}  # (live rows, position) -> the first attention's median, the column every row is divided by
    for r in results:
        first.setdefault((r["live"], r["position"]), r["median_ms"])
    print(f"\nSlots.step on {device}: Mistral-7B shapes, {args.layers} layers, bf16, 8 slots of {MAX_LEN} "
          f"positions, median of {args.steps} steps\n")
    print(f"| attention | live rows | position | ms/step (median) | ms/step (min) | x {results[0]['attention']} |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['attention']} | {r['live']} | {r['position']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
              f"{r['median_ms'] / first[r['live'], r['position']]:.2f}x |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_slots.json").write_text(json.dumps({"device": device, "layers": args.layers, "steps": args.steps,
                                                    "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
