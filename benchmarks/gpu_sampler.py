"""What the chat's sampler costs the device per token, part by part: the draw `talkalike chat RUN` makes after every
decode step (stream.reply_sampler: the no-repeat rule by words, habits, message openers, penalty, two-stage draw).

    python benchmarks/gpu_sampler.py [--vocab 32000] [--reply 40] [--prompt 600]
    python benchmarks/gpu_sampler.py --device cpu --draws 5      # the mechanics on a CPU (host timings)

A 2-layer Mistral of small shapes with the given vocabulary is saved as a run folder (gpu_decode.save_run) and loaded
as the chat loads it, so the sampler is the chat's own; the model itself is not run. Each row times `--draws` calls of
one part on fixed random logits, queued behind a sleeping kernel so that the events time the device's work alone
(the host launching them runs ahead, as it does in the chat, where the step's 4 ms hide it), and counts the kernels
one call launches (torch.profiler). Prints a markdown table; writes gpu_sampler.json under --out.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def device_ms(device, fn, draws: int) -> float:
    """Milliseconds per call of `fn` on the device (on a CPU, wall time per call)."""
    fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(draws):
            fn()
        return (time.perf_counter() - t0) / draws * 1e3
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s: every launch below queues before the device reaches them
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(draws):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / draws


def kernels(device, fn) -> int | None:
    """Device kernels one call of `fn` launches (None on a CPU)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.count for event in prof.key_averages() if event.device_type.name == "CUDA")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000, help="Mistral-7B's vocabulary by default")
    parser.add_argument("--reply", type=int, default=40, help="tokens of the reply drawn so far")
    parser.add_argument("--prompt", type=int, default=600, help="tokens of the prompt (the penalty's seen ids)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-sampler"))
    args = parser.parse_args()
    from gpu_decode import save_run
    from transformers import AutoModelForCausalLM, MistralConfig

    from talkalike.decode import sampling
    from talkalike.decode.language import keep_mass
    from talkalike.decode.stream import reply_sampler
    from talkalike.decode.twin import Twin

    device = torch.device(args.device)
    config = MistralConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        run = save_run(model, Path(folder))
        twin = Twin.from_run(run, Path(folder), dtype=torch.bfloat16 if device.type == "cuda" else None,
                             merge=False)
        twin.device = device
        generation = dataclasses.replace(twin.defaults, seed=0)
        history = [{"role": "user", "content": "hello there, what are you up to tonight?"}]
        prompt = torch.randint(10, 300, (args.prompt,)).tolist()
        sampler, blocked = reply_sampler(twin, device, prompt, generation, history)
        # a reply whose last two tokens are the message separator's tail: a message start, where every rule runs
        reply = torch.randint(10, 300, (args.reply,), device=device)
        if sampler.starts is not None:
            reply[-len(sampler.starts.tail):] = torch.tensor(sampler.starts.tail, device=device)
        seen = torch.cat([torch.tensor(prompt, device=device), reply])[None]
        logits = torch.randn(1, args.vocab, device=device) * 3
        temperature = [generation.temperature]
        buffer = sampler.logits[:1]
        def switched(fn, on):  # `fn` with every sampler part as a Triton kernel (on) or in torch ops
            def run():
                with sampling.kernels(on):
                    return fn()
            return run

        def unfused(fn):
            return switched(fn, False)

        whole = lambda: sampler(logits, seen, temperature, [reply], blocked)  # noqa: E731
        inside = torch.randint(10, 300, (args.reply,), device=device)  # no separator at its end: inside a message
        within = lambda: sampler(logits, seen, temperature, [inside], blocked)  # noqa: E731
        parts = {
            "the chat's whole draw at a message start (Sampler.__call__)": whole,
            "the same, every sampler kernel (steer, penalty and weights too)": switched(whole, True),
            "the same, the sampler in torch ops (no Triton kernels)": unfused(whole),
            "the chat's whole draw inside a message (most tokens)": within,
            "the same inside, every sampler kernel": switched(within, True),
            "the same inside, the sampler in torch ops (no Triton kernels)": unfused(within),
            "copy + pad + blocked mask": lambda: (buffer[:, : args.vocab].copy_(logits),
                                                  buffer[:, args.vocab:].fill_(float("-inf")),
                                                  blocked is None or buffer[:, : args.vocab].masked_fill_(
                                                      blocked, float("-inf"))),
        }
        if generation.no_repeat_ngram > 1:
            rule = lambda: sampling.block_repeats_rows(  # noqa: E731
                buffer, [reply], generation.no_repeat_ngram, sampler.separator, sampler.words)
            parts["no-repeat rule by words (block_repeats_rows, one Triton kernel on CUDA)"] = switched(rule, True)
            parts["no-repeat rule by words in torch ops"] = unfused(rule)
        if sampler.starts is not None:
            parts["message start (MessageStart)"] = lambda: sampler._opener_scales(temperature, [reply])
        if sampler.steer is not None:
            steer = lambda: sampler.steer.apply(buffer[:, : args.vocab], sampler.shares, temperature,  # noqa: E731
                                                [inside])
            parts["language steer (Steer.apply, one Triton kernel on CUDA)"] = switched(steer, True)
            parts["language steer in torch ops"] = unfused(steer)
        if sampler.habits:
            work = torch.empty(1, args.vocab, device=device)
            habits = lambda: keep_mass(buffer[:, : args.vocab], sampler.habits, temperature[0], work)  # noqa: E731
            parts["habits (keep_mass, one Triton kernel on CUDA)"] = switched(habits, True)
            parts["habits (keep_mass in torch ops)"] = unfused(habits)
        draw = lambda: sampling.choose(  # noqa: E731
            buffer, seen, temperature, generation, sampler.generator, args.vocab)
        parts["penalty + draw (choose, the penalty and the weights in Triton on CUDA)"] = switched(draw, True)
        parts["penalty + draw in torch ops"] = unfused(draw)
        for name, fn in parts.items():
            rows.append({"part": name, "device_ms": device_ms(device, fn, args.draws), "kernels": kernels(device, fn)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, vocabulary {args.vocab}, "
          f"reply {args.reply} tokens, prompt {args.prompt}\n")
    print("| part | ms per draw | kernels |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['part']} | {row['device_ms']:.4f} | {row['kernels'] if row['kernels'] is not None else '-'} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_sampler.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
