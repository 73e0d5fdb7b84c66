"""CPU decode and cold-start benchmark for the embedded Gemma 3 270M, against plain transformers `generate()`.

Decode is memory-bound: each token reads every weight once (the tied 262k x 640 LM head is ~60 % of it). So the
limit is bytes read per token / measured memory bandwidth, and we report each decoder as a share of the limit for
its dtype. The bandwidth is measured here, in the same run, with a large torch copy and a large reduction.
Rows: plain `generate()` and talkalike's loop over the transformers model (what `serve` and `chat --compare` run) in
fp32 and bf16, and engines.gemma_cpu's merged decoder (what `chat` runs) in fp32, its default, and bf16.
Cold start is `talkalike chat RUN` in a fresh process, from launch to the first token on stdout, with cached weights
(a run folder with a LoRA adapter over the embedded model is made for it): the first start, which merges the adapter
and caches it in the run folder, then the median of --starts later ones.

Run when the machine is quiet (the load average is printed; two busy cores make two-thread numbers meaningless):
    .venv/bin/python benchmarks/decode_cpu.py [--tokens 64] [--home .bench/home]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HISTORY = [
    {"role": "user", "content": "hey!! are we still on for the beach tonight? 😂"},
    {"role": "assistant", "content": "yes obviously\n<|msg|>\nwhat time"},
    {"role": "user", "content": "8? bring the speaker"},
]


def bandwidth_gbs(torch) -> tuple[float, float]:
    """(read GB/s from a 512 MB reduction, read+write GB/s from a 512 MB copy), best of several."""
    a = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    b = torch.empty_like(a)
    best_sum = best_copy = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        a.sum()
        best_sum = min(best_sum, time.perf_counter() - t)
        t = time.perf_counter()
        b.copy_(a)
        best_copy = min(best_copy, time.perf_counter() - t)
    size = a.numel() * 4
    return size / best_sum / 1e9, 2 * size / best_copy / 1e9


def weight_bytes(model) -> int:
    """Bytes of weights read per decoded token: every parameter once (the tied embedding counts once, as LM head)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def hf_generate_rate(model, prompt, tokens: int, torch) -> float:
    """Decode tok/s of plain `generate()` (greedy), prefill excluded: (N-1 tokens) / (time(N) - time(1))."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        one = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        many = time.perf_counter() - t
    return (tokens - 1) / (many - one)


def our_rate(engine, vocab: int, prompt, tokens: int) -> float:
    """Decode tok/s of talkalike's loop over `engine` (greedy, no stop), timed from the first token to the last."""
    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.sampling import Sampler
    from talkalike.decode.stream import tokens as token_loop

    config = GenerationConfig(temperature=0, max_new_tokens=tokens)
    sampler = Sampler(config, vocab, rows=1, device=engine.device)

    def run(n: int):
        return token_loop(engine, prompt, n, lambda logits, seen: sampler(logits, seen, [0.0]), set())

    list(run(3))  # warm-up
    stamps = [time.perf_counter() for _ in run(tokens)]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def eager_rate(model, prompt, tokens: int) -> float:
    """our_rate over the eager engine (a transformers model's own forward)."""
    import torch

    from talkalike.decode.engines.eager import EagerEngine, cache_kwarg

    engine = EagerEngine(model, torch.device("cpu"), len(prompt) + tokens, cache_kwarg(model))
    return our_rate(engine, model.config.vocab_size, prompt, tokens)


def merged_rate(gemma, prompt, tokens: int) -> float:
    """our_rate over engines.gemma_cpu's merged Gemma engine."""
    from talkalike.decode.engines.gemma_cpu import GemmaEngine

    return our_rate(GemmaEngine(gemma, len(prompt) + tokens), gemma.cfg["vocab_size"], prompt, tokens) \
        if gemma else 0.0


def make_run(home: Path) -> Path:
    """A run folder over the embedded model with a fresh LoRA adapter, for the cold-start measurement."""
    run = home / "runs" / "bench"
    if (run / "run.json").is_file():
        return run
    from peft import LoraConfig, get_peft_model

    from talkalike.model import load_base, load_tokenizer

    model = get_peft_model(load_base(None, home), LoraConfig(r=16, target_modules="all-linear"))
    model.save_pretrained(run / "adapter")
    load_tokenizer(None, home).save_pretrained(run / "tokenizer")
    (run / "run.json").write_text(json.dumps({"base": {"id": "gemma-3-270m"}, "layout": "chat", "persona": "Noa"}))
    return run


def cold_start(home: Path, run: Path, repeats: int = 3, compare: bool = False) -> list[float]:
    """Seconds from launching `talkalike chat RUN` to the first character of the reply on stdout."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "talkalike", "--home", str(home), "chat", str(run),
                                    "--max-new-tokens", "5"] + (["--compare"] if compare else []),
                                   cwd=ROOT, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        process.stdin.write(b"hey! beach tonight?\n")
        process.stdin.flush()
        process.stdout.read(len("Noa: ") + 1)
        times.append(time.perf_counter() - start)
        process.stdin.close()
        process.wait(timeout=120)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--home", default=str(ROOT / ".bench" / "home"))
    parser.add_argument("--skip-cold-start", action="store_true")
    parser.add_argument("--skip-decode", action="store_true", help="only the cold start")
    parser.add_argument("--threads", type=int, help="torch threads (default: physical cores, as `talkalike chat`)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is reported")
    parser.add_argument("--starts", type=int, default=5, help="cold starts with the merged cache (median reported)")
    parser.add_argument("--config", help="a folder with the model's config.json: random weights of the same shapes "
                                         "(decode speed does not depend on the values), for machines without the "
                                         "embedded model; implies --skip-cold-start")
    args = parser.parse_args()
    home = Path(args.home)

    import torch

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.engines.gemma_cpu import from_model, supported
    from talkalike.decode.turns import fit_prompt
    from talkalike.decode.twin import Twin, physical_cores
    from talkalike.model import ensure_embedded, load_base, load_tokenizer

    if args.config:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(args.config)
        args.skip_cold_start = True
        tokenizer = None

        def load(dtype):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        ensure_embedded(home / "models")
        tokenizer = load_tokenizer(None, home)

        def load(dtype):
            return load_base(None, home, dtype=dtype)
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}, "
          f"load average before {os.getloadavg()[0]:.1f}, torch {torch.__version__}", file=sys.stderr)
    read_bw, copy_bw = bandwidth_gbs(torch)
    rows = []
    for dtype in () if args.skip_decode else (torch.float32, torch.bfloat16):
        model = load(dtype)
        model.eval()
        # Random weights have no tokenizer: a fixed prompt of the usual length stands in.
        prompt = fit_prompt(Twin.of(model, tokenizer), HISTORY, GenerationConfig()) if tokenizer \
            else list(range(1000, 1046))
        # The chat's decoder over the same weights (fused copies of the layer matrices; the embedding is shared).
        decoder = from_model(model) if supported(model.config.to_dict()) else None
        size = weight_bytes(model)
        name = str(dtype).removeprefix("torch.")
        best = {}
        # Best of a few interleaved rounds: on a shared machine the slowest rounds measure the neighbours.
        for _ in range(args.rounds):
            for label, measure in ((f"transformers generate, {name}", partial(hf_generate_rate, model, prompt,
                                                                               args.tokens, torch)),
                                   (f"talkalike loop, {name}", partial(eager_rate, model, prompt, args.tokens))):
                best[label] = max(best.get(label, 0.0), measure())
                print(f"  {label}: {best[label]:.2f} tok/s so far", file=sys.stderr, flush=True)
            label = f"talkalike merged decoder (cpudecode), {name}"
            best[label] = max(best.get(label, 0.0), merged_rate(decoder, prompt, args.tokens))
            print(f"  {label}: {best[label]:.2f} tok/s so far", file=sys.stderr, flush=True)
        rows += [(label, rate, size) for label, rate in best.items()]
        del model, decoder
    if rows:
        read_bw = max(read_bw, bandwidth_gbs(torch)[0])
        rows = [(label, rate, read_bw * 1e9 / size, size) for label, rate, size in rows]

        print(f"\nmemory bandwidth: read {read_bw:.1f} GB/s (reduction), copy {copy_bw:.1f} GB/s (read+write)")
        print(f"prompt: {len(prompt)} tokens, {args.tokens} tokens decoded (greedy), batch 1\n")
        print("| decoder | MB read/token | limit tok/s | tok/s | share of limit |")
        print("|---|---|---|---|---|")
        uses = {"talkalike merged decoder (cpudecode), float32": " (`chat`)",
                "talkalike loop, float32": " (`serve`, `chat --compare`)"}
        for name, rate, limit, size in rows:
            print(f"| {name}{uses.get(name, '')} | {size / 1e6:.0f} | {limit:.1f} | {rate:.1f} | {rate / limit:.0%} |")

    if not args.skip_cold_start:
        from talkalike.decode.engines.gemma_cpu import CACHE_DIR

        run = make_run(home)
        import shutil

        shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
        first = cold_start(home, run, repeats=1)[0]
        times = cold_start(home, run, repeats=args.starts)
        compare = cold_start(home, run, repeats=1, compare=True)[0]
        print(f"\ncold start, `talkalike chat RUN` to the first token (cached base weights, threads {physical_cores()}):"
              f"\n  first start (merges the adapter into {CACHE_DIR}/): {first:.2f} s"
              f"\n  later starts: {sorted(times)[len(times) // 2]:.2f} s median of {len(times)} "
              f"(best {min(times):.2f}, worst {max(times):.2f})"
              f"\n  `chat RUN --compare` (transformers + peft, fp32): {compare:.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
