"""LoRA's dropout kernels (talkalike/train/lora_kernels.py) against torch's dropout and products, at a 7B layer's
widths, with every tile choice in CONFIG's neighbourhood timed; prints a table and writes the fastest choice as JSON.

    python benchmarks/gpu_lora_kernels.py --out /tmp/out   # then LORA_KERNELS_CONFIG=/tmp/out/lora_kernels.json

Per input width (4,096: q, k, v, o, gate, up; 14,336: down) and rows a micro-batch (4 or 8 packed rows of 1,024
tokens), r = 32, p = 0.07, bf16, as the GPU recipe trains:
- torch, forward: `native_dropout(x)` then `dropped @ A.T` (what the lean branch ran before the kernels);
- torch, backward: the mask drawn again, `grad_low.T @ dropped`, `grad_low @ A` and dropout's backward;
- the floor: `x @ A.T` alone (one read of x, no mask);
- ours: `dropped_low`, then `dropped_grad_a` + `dropped_grad_x`, each at its fastest tiles.
"""

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkalike.train import lora_kernels  # noqa: E402

CHOICES = {
    "low": {"BM": (16, 32, 64), "BK": (64, 128), "num_warps": (4,), "programs": (512, 2048)},
    "grad_a": {"BM": (32, 64, 128), "BK": (64, 128), "num_warps": (4,), "programs": (512, 2048)},
    "grad_x": {"BM": (32, 64, 128), "BK": (64, 128, 256), "num_warps": (4, 8)},
}


def bench(function) -> float:
    from triton.testing import do_bench

    return do_bench(function, warmup=5, rep=30)


def torch_forward(x, a, p):
    dropped, _ = torch.native_dropout(x, p, True)
    return dropped @ a.t()


def torch_backward(x, a, grad_low, p):
    dropped, mask = torch.native_dropout(x, p, True)
    grad_a = grad_low.t() @ dropped
    grad_x = torch.ops.aten.native_dropout_backward(grad_low @ a, mask, 1 / (1 - p))
    return grad_a, grad_x


def ours(kind, x, a, grad_low, seed, p):
    if kind == "low":
        return lambda: lora_kernels.dropped_low(x, a, seed, p)
    if kind == "grad_a":
        return lambda: lora_kernels.dropped_grad_a(grad_low, x, seed, p)
    return lambda: lora_kernels.dropped_grad_x(grad_low, a, seed, p, x.dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-lora-kernels"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    p, rank = 0.07, 32
    shapes = [(rows, width) for rows in (4009, 8018) for width in (4096, 14336)]
    seed = lora_kernels.new_seed()
    totals: dict[str, dict[tuple, float]] = {kind: {} for kind in CHOICES}
    inputs = {}
    for rows, width in shapes:
        x = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
        a = torch.randn(rank, width, device="cuda", dtype=torch.bfloat16) * 0.02
        grad_low = torch.randn(rows, rank, device="cuda", dtype=torch.bfloat16)
        inputs[rows, width] = (x, a, grad_low)
        for kind, choices in CHOICES.items():
            for values in itertools.product(*choices.values()):
                config = dict(zip(choices, values, strict=True))
                lora_kernels.CONFIG[kind] = config
                try:
                    ms = bench(ours(kind, x, a, grad_low, seed, p))
                except Exception as error:  # a tile that does not compile here: not a choice
                    print(f"{kind} {config}: {type(error).__name__}", flush=True)
                    ms = float("inf")
                key = tuple(values)
                totals[kind][key] = totals[kind].get(key, 0.0) + ms
    best = {kind: dict(zip(CHOICES[kind], min(times, key=times.get), strict=True)) for kind, times in totals.items()}
    lora_kernels.CONFIG.update(best)
    (out / "lora_kernels.json").write_text(json.dumps(best, indent=1))
    print("fastest tiles over the four shapes:", json.dumps(best), flush=True)
    print(f"\n{'rows':>5} {'width':>6} | {'floor x@A.T':>11} | {'torch fwd':>9} {'ours fwd':>9} | "
          f"{'torch bwd':>9} {'ours bwd':>9} {'(grad_a':>8} {'grad_x)':>8} | {'fwd x':>6} {'bwd x':>6}")
    for (rows, width), (x, a, grad_low) in inputs.items():
        floor = bench(lambda x=x, a=a: x @ a.t())
        torch_fwd = bench(lambda x=x, a=a: torch_forward(x, a, p))
        torch_bwd = bench(lambda x=x, a=a, g=grad_low: torch_backward(x, a, g, p))
        fwd = bench(ours("low", x, a, grad_low, seed, p))
        grad_a = bench(ours("grad_a", x, a, grad_low, seed, p))
        grad_x = bench(ours("grad_x", x, a, grad_low, seed, p))
        print(f"{rows:5d} {width:6d} | {floor:9.3f}ms | {torch_fwd:7.3f}ms {fwd:7.3f}ms | {torch_bwd:7.3f}ms "
              f"{grad_a + grad_x:7.3f}ms {grad_a:6.3f}ms {grad_x:6.3f}ms | {torch_fwd / fwd:6.2f} "
              f"{torch_bwd / (grad_a + grad_x):6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
