"""From one GPU to every GPU of this machine: `talkalike train`'s path through the shipped Accelerate configs.

    python benchmarks/gpu_multi.py --out /tmp/gpu-multi                 # every leg below, one table
    python benchmarks/gpu_multi.py --out /tmp/gpu-multi --legs scaling  # only the three scaling legs
    python benchmarks/gpu_multi.py --cpu --out /tmp/multi-cpu           # smoke: 2 gloo processes, a tiny model

Scaling legs, all on the Mistral-7B shape (random weights, saved once to OUT/model), the same packed rows, the original
recipe in QLoRA (2 rows of 1,024 tokens per device, 4 accumulated), the same number of optimizer steps:
- 1 GPU: configs/accelerate/ddp.yaml with one process;
- DDP: configs/accelerate/ddp.yaml, one process per GPU;
- FSDP + QLoRA: configs/accelerate/fsdp_qlora.yaml, one process per GPU.
Each process trains through talkalike.train.trainer.make_trainer. The timed window starts after --warmup optimizer
steps and lasts --steps steps; it opens and closes at a barrier, after a CUDA synchronize, on every rank. tok/s is the
tokens every rank trained in that window, summed (all-reduce), over the longest rank's window; scaling efficiency is
N-GPU tok/s / (N x 1-GPU tok/s). Peak memory is the largest over ranks, at load and during training separately (under
FSDP each rank still loads the whole 4-bit model before it is sharded: transformers places bitsandbytes weights on the
current GPU). The loss compared is the logged loss (mean over ranks) at the first step by which all ranks together had
trained as many tokens as the 1-GPU leg did in all its steps.

Emulated small cards (what FSDP + QLoRA is for): every process of two more legs is capped with
torch.cuda.set_per_process_memory_fraction at --cap-gb, by default halfway between what the 1-GPU leg needed to load the
model and what it needed to train it. Without sharding (one process) the model loads and then must run out of memory;
with FSDP on every GPU it must train. The 4-bit weights fit the capped card, the weights plus training state do not.

With one GPU the multi-GPU legs are listed as needing more GPUs; nothing here assumes a GPU count. Logs, one JSON
result per leg and table.txt go to --out.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")
CPU_SHAPE = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, sliding_window=None)
CPU_MAX_LENGTH = 256  # the smoke mode's packed rows: short enough for two CPU processes on a shared laptop


# ---- arithmetic (pure, tested in tests/train/test_multi_gpu_bench.py) ----

def window_rate(tokens_per_rank: list[int], seconds_per_rank: list[float]) -> float:
    """Tokens/s of all ranks together: every rank's tokens in the window, summed, over the longest rank's window."""
    assert len(tokens_per_rank) == len(seconds_per_rank) and tokens_per_rank, "one entry per rank"
    return sum(tokens_per_rank) / max(seconds_per_rank)


def scaling_efficiency(rate: float, processes: int, one_gpu_rate: float) -> float:
    """N-process tok/s over N times the 1-process tok/s: 1.0 is linear; not clamped, so a flawed run shows."""
    return rate / (processes * one_gpu_rate)


def loss_after(steps: list[dict], tokens: int) -> dict | None:
    """The first step record by which `tokens` tokens had been trained over all ranks, or None if never reached."""
    return next((s for s in steps if s["tokens"] >= tokens and s.get("loss") is not None), None)


def failure(log: str) -> str:
    """What ended a failed leg, from its log: out of memory (at load or in training), or the last error line."""
    if any(marker in log for marker in OOM_MARKERS):
        return "out of memory " + ("while training" if "loaded:" in log else "while loading")
    errors = [line for line in log.splitlines() if "Error" in line or "error" in line]
    return errors[-1].strip()[:160] if errors else "failed (see its log)"


def capped_gb(load_gb: float, train_gb: float) -> float | None:
    """The default emulated card: halfway between what loading and training took on one process (None if training
    took no more than loading, so no cap can tell the two apart)."""
    return (load_gb + train_gb) / 2 if train_gb > load_gb + 0.1 else None


# ---- worker: one process of one leg, launched by `accelerate launch` or torchrun ----

def _collective(values: list[float], device) -> list[float]:
    """Every rank's value, on every rank: a one-hot vector per rank, summed (works alike with gloo and NCCL)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [values]
    rank, world = dist.get_rank(), dist.get_world_size()
    table = torch.zeros(world, len(values), dtype=torch.float64, device=device)
    table[rank] = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(table)
    return table.cpu().tolist()


def _barrier(device) -> None:
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _window_callback(counts: dict, warmup: int, steps: int, device, record: dict):
    """A TrainerCallback: per-step tokens over all ranks and the logged loss; the timed window's per-rank tokens and
    seconds into `record`."""
    from transformers import TrainerCallback

    class Window(TrainerCallback):
        def __init__(self):
            self.seen = 0
            self.total = 0

        def on_step_end(self, args, state, control, **kwargs):
            _barrier(device)
            step_tokens = counts["tokens"] - self.seen
            self.seen = counts["tokens"]
            self.total += int(sum(row[0] for row in _collective([step_tokens], device)))
            record["steps"].append({"step": state.global_step, "tokens": self.total, "loss": None})
            if state.global_step in (warmup, warmup + steps):
                mark = (time.perf_counter(), counts["tokens"])
                if state.global_step == warmup:
                    self.start = mark
                else:
                    rows = _collective([mark[1] - self.start[1], mark[0] - self.start[0]], device)
                    record["window_tokens"] = [int(r[0]) for r in rows]
                    record["window_seconds"] = [r[1] for r in rows]

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and record["steps"] and record["steps"][-1]["step"] == state.global_step:
                record["steps"][-1]["loss"] = logs["loss"]

    return Window()


def _memory_gb(device) -> tuple[float, float]:
    """(peak allocated, peak reserved) GB since the last reset on a GPU; the process's peak resident size on a CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return rss, rss


def worker(args) -> int:
    """Train one leg's process; rank 0 writes the leg's result JSON."""
    from dataclasses import replace

    import torch
    from transformers import AutoTokenizer

    from talkalike.files import read_jsonl, write_json
    from talkalike.model import load_base
    from talkalike.train.qlora import release_optimizer_overrides
    from talkalike.train.recipe import resolve_recipe
    from talkalike.train.trainer import make_trainer

    cuda = not args.cpu
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local)
        if args.cap_gb:  # the emulated small card: this process's allocations fail beyond cap_gb
            total = torch.cuda.get_device_properties(local).total_memory
            torch.cuda.set_per_process_memory_fraction(args.cap_gb * 2**30 / total, local)
    recipe, _ = resolve_recipe("original", cuda)
    if not cuda:
        recipe = replace(recipe, max_length=CPU_MAX_LENGTH)
    model = load_base(args.model, None, quantize_4bit=recipe.quantize_4bit,
                      dtype=torch.bfloat16 if recipe.bf16 else None)
    load_gb, load_reserved_gb = _memory_gb(device)
    weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0
    print(f"rank {rank} loaded: {weights_gb:.2f} GB held, {load_reserved_gb:.2f} GB reserved at peak", flush=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records = read_jsonl(Path(args.data))
    counts = {"tokens": 0, "trained_tokens": 0}
    record = {"steps": []}
    window = _window_callback(counts, args.warmup, args.steps, device, record)
    trainer = make_trainer(model, tokenizer, records, [], recipe, Path(args.result).with_suffix(".trainer"),
                           max_steps=args.warmup + args.steps, callbacks=[window], token_counts=counts)
    trainer.args.save_strategy = "no"  # a checkpoint is no part of training speed
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    train_gb, train_reserved_gb = _memory_gb(device)
    memory = _collective([load_gb, load_reserved_gb, train_gb, train_reserved_gb, weights_gb], device)
    release_optimizer_overrides()
    if rank == 0:
        write_json(Path(args.result), {
            "leg": args.leg, "processes": len(memory), "warmup": args.warmup, "steps": args.steps,
            "window_tokens": record["window_tokens"], "window_seconds": record["window_seconds"],
            "tokens_per_s": window_rate(record["window_tokens"], record["window_seconds"]),
            "load_gb": [m[0] for m in memory], "load_reserved_gb": [m[1] for m in memory],
            "train_gb": [m[2] for m in memory], "train_reserved_gb": [m[3] for m in memory],
            "weights_gb": [m[4] for m in memory], "cap_gb": args.cap_gb, "train_wall_s": wall,
            "per_device_rows": recipe.batch_size, "grad_accum": recipe.grad_accum, "max_length": recipe.max_length,
            "step_records": record["steps"],
            "device": torch.cuda.get_device_name(local) if cuda else "cpu"})
    return 0


# ---- driver: the model, the data, the legs, the table ----

def build_model(folder: Path, cpu: bool) -> None:
    """A random-weight causal LM (the Mistral-7B shape, or a tiny one for --cpu) and a tokenizer over its ids."""
    import torch
    from gpu_train import build_config, word_tokenizer
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(**CPU_SHAPE) if cpu else build_config("mistral-7b")
    torch.manual_seed(0)
    with torch.device("cpu" if cpu else "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if cpu else torch.bfloat16)
    model.save_pretrained(folder)
    word_tokenizer(config.vocab_size).save_pretrained(folder)


def build_data(path: Path, vocab: int, rows_needed: int, max_length: int) -> int:
    """Samples with the sample chat's turn lengths (persona mask kept), enough to pack `rows_needed` rows of
    `max_length` tokens with a third to spare, so no leg reaches the end of an epoch; returns their tokens."""
    from gpu_train import make_rows

    from talkalike.files import write_jsonl

    records, tokens, n = [], 0, 0
    while tokens < rows_needed * max_length * 4 // 3:
        for row in make_rows(vocab, 256, seed=n):
            ids, mask = row["input_ids"][:max_length], row["mask"][:max_length]
            if any(mask):
                records.append({"input_ids": ids, "assistant_masks": mask})
                tokens += len(ids)
        n += 1
    write_jsonl(path, records)
    return tokens


def run_leg(args, name: str, config: str | None, processes: int, port: int, cap_gb: float | None = None) -> dict:
    """Launch one leg and return its result, or {"failed": why}; its log is OUT/<name>.log."""
    script = [str(Path(__file__).resolve()), "--worker", "--leg", name, "--model", str(args.out / "model"),
              "--data", str(args.out / "data.jsonl"), "--result", str(args.out / f"{name}.json"),
              "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if cap_gb:
        script += ["--cap-gb", f"{cap_gb:.3f}"]
    if args.cpu:  # gloo on the CPU; accelerate launch's CPU path wants MPI for several processes
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                  "--master_port", str(port)]
        script.append("--cpu")
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                  "--num_processes", str(processes), "--main_process_port", str(port)]
    # torchrun gives each process one CPU thread when it starts several, but leaves a single process all of them;
    # with the same setting in every leg only the process count differs (on a shared 2-core machine a 2-thread
    # single process ran 6x slower per process than two 1-thread ones: contention, not scaling).
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    log = args.out / f"{name}.log"
    (args.out / f"{name}.json").unlink(missing_ok=True)
    print(f"[{name}] {processes} process(es){f', capped at {cap_gb:.2f} GB each' if cap_gb else ''}: log {log}",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        # Its own process group, so a leg that hangs (one rank waiting on a collective) is ended whole.
        leg = subprocess.Popen(launch + script, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                               start_new_session=True)
        try:
            leg.wait(timeout=args.leg_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(leg.pid, signal.SIGKILL)
            leg.wait()
            return {"failed": f"no result within {args.leg_timeout}s"}
    result_path = args.out / f"{name}.json"
    if not result_path.is_file():
        return {"failed": failure(log.read_text(errors="replace"))}
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - started
    return result


def table(rows: list[tuple[str, dict | str]], one: dict | None, target: int | None) -> str:
    """The results as one text table."""
    head = (f"{'leg':28} {'procs':>5} {'tok/s (all ranks)':>17} {'efficiency':>10} {'load GB/GPU':>11} "
            f"{'train GB/GPU':>12} {'loss @ tokens (step)':>22}")
    lines = [head, "-" * len(head)]
    for label, r in rows:
        if isinstance(r, str):
            lines.append(f"{label:28} {r}")
            continue
        if "failed" in r:
            lines.append(f"{label:28} {r.get('processes', ''):>5} {r['failed']}")
            continue
        eff = (f"{scaling_efficiency(r['tokens_per_s'], r['processes'], one['tokens_per_s']):10.3f}"
               if one and "failed" not in one and not r.get("cap_gb") else f"{'':>10}")
        hit = loss_after(r["step_records"], target) if target else None
        loss = f"{hit['loss']:.4f} ({hit['step']})" if hit else "not reached"
        lines.append(f"{label:28} {r['processes']:>5} {r['tokens_per_s']:17,.0f} {eff} {max(r['load_gb']):11.2f} "
                     f"{max(r['train_gb']):12.2f} {loss:>22}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-multi")))
    parser.add_argument("--legs", choices=("all", "scaling", "demo"), default="all",
                        help="demo: the 1-GPU leg (it sets the default cap) and the two capped legs")
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before the timed window")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps in the timed window")
    parser.add_argument("--cap-gb", type=float, help="the emulated card's memory per process (default: see above)")
    parser.add_argument("--leg-timeout", type=int, default=420, help="seconds before a leg is given up")
    parser.add_argument("--cpu", action="store_true", help="smoke mode: gloo, 2 processes, a tiny model, no 4-bit")
    # the worker's own options, set by the driver
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for option in ("--leg", "--model", "--data", "--result"):
        parser.add_argument(option, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the window opens at the end of a warm-up step)")
    if args.worker:
        return worker(args)

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    gpus = 2 if args.cpu else torch.cuda.device_count()
    if gpus == 0:
        print("error: no CUDA GPU here; run with --cpu for the smoke mode.", file=sys.stderr)
        return 2
    ddp, fsdp = str(ROOT / "configs/accelerate/ddp.yaml"), str(ROOT / "configs/accelerate/fsdp_qlora.yaml")
    if not (args.out / "model" / "config.json").is_file():
        print(f"building the {'tiny' if args.cpu else 'Mistral-7B-shaped'} random-weight model in {args.out}/model",
              file=sys.stderr, flush=True)
        # In its own process, so the GPU memory it used is free before the legs start.
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'benchmarks'); import gpu_multi; "
                        f"gpu_multi.build_model(__import__('pathlib').Path({str(args.out / 'model')!r}), {args.cpu})"],
                       cwd=ROOT, check=True)
    max_length, per_step = (CPU_MAX_LENGTH if args.cpu else 1024), 2 * 4  # the recipe's rows x accumulation
    vocab = json.loads((args.out / "model" / "config.json").read_text())["vocab_size"]
    tokens = build_data(args.out / "data.jsonl", vocab, (args.warmup + args.steps) * per_step * gpus, max_length)
    print(f"data: {tokens:,} tokens for {args.warmup} warm-up + {args.steps} timed steps on up to {gpus} processes",
          file=sys.stderr, flush=True)

    rows: list[tuple[str, dict | str]] = []
    unit = "process" if args.cpu else "GPU"
    one = run_leg(args, "one", ddp, 1, 29500)
    rows.append((f"1 {unit}", one))
    more = f"needs 2 or more GPUs (this machine has {gpus})"
    if args.legs in ("all", "scaling"):
        label = f"DDP, {gpus} processes" if args.cpu else f"DDP, {gpus} GPUs" if gpus > 1 else "DDP, every GPU"
        rows.append((label, run_leg(args, f"ddp{gpus}", ddp, gpus, 29501) if gpus > 1 else more))
        if args.cpu:
            rows.append(("FSDP + QLoRA", "needs CUDA GPUs (4-bit weights)"))
        else:
            rows.append((f"FSDP + QLoRA, {gpus} GPUs" if gpus > 1 else "FSDP + QLoRA, every GPU",
                         run_leg(args, f"fsdp{gpus}", fsdp, gpus, 29502) if gpus > 1 else more))
    cap = None
    if args.legs in ("all", "demo") and not args.cpu:
        cap = args.cap_gb or (capped_gb(max(one["load_reserved_gb"]), max(one["train_gb"]))
                              if "failed" not in one else None)
        if cap is None:
            rows.append(("capped cards", "no cap: give --cap-gb (the 1-GPU leg failed or its training needed no "
                                         "more memory than its loading)"))
        else:
            rows.append((f"no sharding, 1 GPU @ {cap:.2f} GB", run_leg(args, "capped1", ddp, 1, 29503, cap)))
            rows.append((f"FSDP + QLoRA, {gpus if gpus > 1 else 'every'} GPU(s) @ {cap:.2f} GB",
                         run_leg(args, f"capped-fsdp{gpus}", fsdp, gpus, 29504, cap) if gpus > 1 else more))
    target = one["step_records"][-1]["tokens"] if "failed" not in one else None
    device = one.get("device", "?")
    header = (f"{device}, {gpus} {unit}(s); Mistral-7B shape in 4-bit" if not args.cpu else
              "CPU smoke: gloo, tiny model, no 4-bit") + (
        f"; {args.warmup} warm-up + {args.steps} timed optimizer steps, 2 rows x {max_length} tokens x 4 per device;"
        f" loss at {target:,} tokens (all the 1-{unit} leg trained)" if target else "")
    text = header + "\n" + table(rows, one, target)
    if cap:
        one_gb = max(one["train_reserved_gb"])
        text += (f"\ncapped legs: each process limited to {cap:.2f} GB; unsharded, the model took "
                 f"{max(one['weights_gb']):.2f} GB held after loading and {one_gb:.2f} GB reserved in training")
    (args.out / "table.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
