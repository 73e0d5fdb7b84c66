"""Single-stream decode on one CUDA GPU for a 7B model in bf16: plain `generate` against talkalike's CUDA engines.

    python benchmarks/gpu_decode.py [--tokens 256] [--prompt 512] [--chat-run]
    python benchmarks/gpu_decode.py --chat-run-smoke      # --chat-run's mechanics on a CPU, a tiny model

The model has Mistral-7B's shapes with random weights (a merged twin has the same shapes). `--chat-run` also saves it
as a run folder with a LoRA adapter on every projection and times a reply through the chat command's own path
(`load_twin`, `stream_reply`: adapter merged at load, sampling and turn rules included), with the host's text work
per token, then the same engine and sampler without the text side (what the sampler costs). The limit is the weight
bytes read per token divided by the card's bandwidth, given both from the card's datasheet figure and from a
device-to-device copy measured here. Prints a table and writes gpu_decode.json under $OUT.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from talkalike.decode.stream import tokens  # noqa: E402

DATASHEET_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def measured_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (time.perf_counter() - t0)


def profile_step(decoder, ids: list[int], path: Path, label: str, steps: int = 32) -> None:
    """GPU kernel time per decoded token, by kernel, written to `path` (the CUDA-graph replays included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        list(tokens(decoder, ids, steps, greedy, stops=set()))
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in events)
    lines = [f"{label}: {total / steps:.0f} us of kernel time per token, {sum(e.count for e in events) / steps:.0f} "
             f"kernels per token", f"{'us/token':>9} {'calls/token':>11}  kernel"]
    for e in events[:30]:
        lines.append(f"{e.self_device_time_total / steps:9.1f} {e.count / steps:11.1f}  {e.key[:110]}")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:14]), flush=True)


def shape_label(config) -> str:
    """rows per program x columns per iteration x warps."""
    return "x".join(map(str, config))


def matvec_table(step) -> dict:
    """Per matrix-vector role of the Triton step: the block shape chosen, and GB/s of weights for each candidate."""
    table = {}
    for role, timings in step.timings.items():
        if role == "head":
            weight_bytes = step.head.numel() * step.head.element_size()
        else:
            weight_bytes = sum(layer[role].numel() * layer[role].element_size() for layer in step.layers)
        table[role] = {"chosen": shape_label(step.configs[role]), "ms_all_layers": min(timings.values()),
                       "gb_s": {shape_label(config): round(weight_bytes / (ms * 1e-3) / 1e9)
                                for config, ms in timings.items()}}
    return table


def build_model(layers: int = 32):
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                           sliding_window=None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval()


def build_engine(model, max_len: int, engine: str = "triton", tune_kernels: bool = True, fuse: bool = True,
                 **options):
    """The Triton step (engine "triton", the default) or the torch.compile engine ("compile") over `model`."""
    from talkalike.decode.engines.cuda_graph import FusedStep, GraphEngine
    from talkalike.decode.engines.triton_step import TritonStep

    if engine == "triton":
        return TritonStep(FusedStep(model, max_len), tune=tune_kernels)
    return GraphEngine(model, max_len, tune_kernels=tune_kernels, fuse=fuse, **options)


def greedy(logits, seen):
    return logits.argmax(dim=-1)


def teacher_forced_agreement(model, decoder, prompt_ids: list[int], reference: list[int]) -> float:
    """Share of positions where the graph step's argmax equals an eager full forward's, both fed `reference`.

    With random weights the logits are nearly flat, so free-running greedy paths part ways after a bf16 rounding
    difference; feeding both the same tokens compares the maths position by position instead.
    """
    forced = iter(reference)
    picked = []

    def follow(logits, seen):
        picked.append(int(logits.argmax(dim=-1)))
        return torch.tensor([next(forced, 0)], device=logits.device)

    list(tokens(decoder, prompt_ids, len(reference) - 1, follow, stops=set()))
    with torch.inference_mode():
        full = torch.tensor([prompt_ids + reference], device="cuda")
        eager = model(full).logits[0, len(prompt_ids) - 1 : -1].argmax(dim=-1).tolist()
    return sum(a == b for a, b in zip(picked, eager, strict=False)) / len(picked)


def synchronize() -> None:
    """Wait for the GPU (a no-op on a CPU, where chat_run_speed can be tried: `--chat-run-smoke`)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_tokens(fn) -> tuple[float, list[int]]:
    synchronize()
    t0 = time.perf_counter()
    out = fn()
    synchronize()
    return len(out) / (time.perf_counter() - t0), out


def save_run(model, folder: Path) -> Path:
    """`model` saved as a base under `folder` and a run folder on it with a random LoRA adapter on every projection
    (the tests' tiny tokenizer: a few hundred tokens; ids past them decode to nothing, which costs the same)."""
    from peft import LoraConfig, get_peft_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_tokenizer

    run = folder / "runs" / "twin7b"
    model.save_pretrained(folder / "base")
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(folder / "base")
    tokenizer.save_pretrained(run / "tokenizer")
    lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(run / "adapter")
    peft_model.unload()  # the caller's model is used again without the adapter
    (run / "run.json").write_text(json.dumps({"base": {"id": str(folder / "base"), "source": "local"},
                                              "layout": "chat", "persona": "Noa"}))
    return run


def chat_run_speed(model, tokens_wanted: int, prompt_words: int, folder: Path) -> list[dict]:
    """Rows: tok/s of `talkalike chat RUN`'s path on a run folder saved from `model` with a random LoRA adapter (and
    the host's text work per token), then of the same engine and sampler without the text side."""
    import dataclasses

    import talkalike.decode.stream as stream
    from talkalike.decode.turns import fit_prompt
    from talkalike.decode.twin import load_twin

    t0 = time.perf_counter()
    run = save_run(model, folder)
    saved_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    twin = load_twin(str(run), None, folder)
    load_s = time.perf_counter() - t0
    counted, text_s = [0], [0.0]
    loop = stream.tokens

    def counting(*args, **kwargs):
        for token in loop(*args, **kwargs):
            counted[0] += 1
            handed = time.perf_counter()
            yield token
            text_s[0] += time.perf_counter() - handed  # the host's text work on this token (detokenise, split, mask)

    stream.tokens = counting
    history = [{"role": "user", "content": " ".join(["hello there"] * (prompt_words // 2))}]
    config = dataclasses.replace(twin.defaults, max_new_tokens=16, max_messages=0, memories=0, seed=0,
                                 max_context_tokens=prompt_words * 4 + tokens_wanted)
    stream.reply(twin, history, config)  # picks, builds and captures the engine
    config = dataclasses.replace(config, max_new_tokens=tokens_wanted)
    speeds, text_us = [], []
    for _ in range(2):
        counted[0], text_s[0] = 0, 0.0
        synchronize()
        t0 = time.perf_counter()
        stream.reply(twin, history, config)
        synchronize()
        speeds.append(counted[0] / (time.perf_counter() - t0))
        text_us.append(text_s[0] / counted[0] * 1e6)
    stream.tokens = loop
    engine = twin.engines.get("merged") or twin.engines.get(True)
    rows = [{"variant": "talkalike chat RUN (load_twin + stream_reply, adapter merged at load)", "tok_s": max(speeds),
             "runs_tok_s": speeds, "tokens": counted[0], "engine": type(engine).__name__ if engine else None,
             "text_host_us_per_token": min(text_us), "save_s": saved_s, "load_s": load_s}]
    # The same loop and sampler with no text: what the sampler's kernels cost against the bare engine's greedy row,
    # and, against the row above, what the text side costs (nothing while the host keeps ahead of the device).
    prompt_ids = fit_prompt(twin, history, config)
    sampler, blocked = stream.reply_sampler(twin, engine.device, prompt_ids, config, history)  # the chat's own
    start = len(prompt_ids)

    def sampled():
        return list(stream.tokens(engine, prompt_ids, tokens_wanted, lambda logits, seen: sampler(
            logits, seen, [config.temperature], [seen[0, start:]], blocked), stops=set()))

    sampled_speeds = [time_tokens(sampled)[0] for _ in range(2)]
    rows.append({"variant": "talkalike tokens() with the chat's sampler, no text (same engine)",
                 "tok_s": max(sampled_speeds), "runs_tok_s": sampled_speeds})
    from talkalike.decode import sampling

    # every sampler kernel is on by default: against none, as before engines/triton_sampler.py
    with sampling.kernels(False):
        sampled_speeds = [time_tokens(sampled)[0] for _ in range(2)]
    rows.append({"variant": "the same, the sampler in torch ops, no Triton kernels (unfused)",
                 "tok_s": max(sampled_speeds), "runs_tok_s": sampled_speeds})
    return rows


def chat_run_smoke() -> int:
    """chat_run_speed's mechanics on a CPU (no limits, no table): a 2-layer Mistral of small shapes, 32 tokens."""
    import tempfile

    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           sliding_window=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        for row in chat_run_speed(model, 32, 64, Path(folder)):
            print(json.dumps(row), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--layers", type=int, default=32, help="fewer layers for a quick check of the mechanics")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-decode"))
    parser.add_argument("--variants", default="1,2", help="graph decoders to run, by index (see main)")
    parser.add_argument("--profile", action="store_true", help="kernel time table of 32 steps per decoder")
    parser.add_argument("--chat-run", action="store_true", help="also time the chat command's path on a run folder")
    parser.add_argument("--chat-run-smoke", action="store_true", help="only try --chat-run's mechanics on a CPU")
    args = parser.parse_args()
    if args.chat_run_smoke:
        return chat_run_smoke()
    from talkalike.decode.engines.triton_step import TritonStep

    name = torch.cuda.get_device_name()
    card = next((k for k in DATASHEET_BANDWIDTH if k in name), name)
    model = build_model(args.layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * 2  # decode reads one embedding row, not the table
    bandwidth = measured_bandwidth()  # HBM traffic of a copy, read + write: what the memory system sustains
    limit_datasheet = DATASHEET_BANDWIDTH.get(card, float("nan")) / weight_bytes
    limit_measured = bandwidth / weight_bytes
    prompt = torch.randint(1000, 32000, (1, args.prompt), device="cuda")
    rows = []

    def plain_generate(**kwargs):
        with torch.inference_mode():
            out = model.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=0, **kwargs)
        return out[0, args.prompt:].tolist()

    time_tokens(lambda: plain_generate()[:8])  # warm-up
    speed, reference = time_tokens(plain_generate)
    rows.append({"variant": "generate (eager, dynamic cache)", "tok_s": speed})
    print(json.dumps(rows[-1]), flush=True)

    ids = prompt[0].tolist()
    variants = [  # (label, GraphDecoder arguments)
        ("GraphDecoder, model's own forward + StaticCache, torch.compile", dict(fuse=False, engine="compile")),
        ("GraphDecoder, fused step, torch.compile (last default)", dict(engine="compile")),
        ("GraphDecoder, Triton step in one CUDA graph (the default)", dict()),
        ("GraphDecoder, Triton step, block shapes not searched", dict(tune_kernels=False)),
    ]
    chosen = [v for i, v in enumerate(variants) if str(i) in args.variants.split(",")]
    for label, kwargs in chosen:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        try:
            decoder = build_engine(model, args.prompt + args.tokens + 16, **kwargs)
            list(tokens(decoder, ids, 16, greedy, stops=set()))  # compile + capture
            compile_s = time.perf_counter() - t0
            def decode(decoder=decoder):
                return list(tokens(decoder, ids, args.tokens, greedy, stops=set()))

            speed, ours = time_tokens(decode)
            again, _ = time_tokens(decode)
            agree = teacher_forced_agreement(model, decoder, ids, reference)
        except Exception as error:  # one variant failing must not lose the others' numbers
            import traceback

            traceback.print_exc()
            rows.append({"variant": f"talkalike {label}", "tok_s": float("nan"), "error": repr(error)[:300]})
            continue
        rows.append({"variant": f"talkalike {label}", "tok_s": max(speed, again), "runs_tok_s": [speed, again],
                     "compile_s": compile_s, "fused": decoder.fused is not None,
                     "argmax_agreement_teacher_forced": agree})
        if isinstance(decoder, TritonStep):
            rows[-1]["matvec"] = matvec_table(decoder)
        print(json.dumps(rows[-1]), flush=True)  # partial results survive a time limit
        if args.profile:
            try:
                profile_step(decoder, ids, Path(args.out) / f"profile-{variants.index((label, kwargs))}.txt", label)
            except Exception:  # a diagnostic; the timings above stand without it
                import traceback

                traceback.print_exc()
        del decoder

    if args.chat_run:
        try:
            rows.extend(chat_run_speed(model, args.tokens, args.prompt, Path(os.environ.get("TMPDIR", "/tmp"))
                                       / "gpu-decode-run"))
        except Exception as error:  # the decoders' rows above stand without it
            import traceback

            traceback.print_exc()
            rows.append({"variant": "talkalike chat RUN", "tok_s": float("nan"), "error": repr(error)[:300]})
        print(json.dumps(rows[-1]), flush=True)

    for row in rows:
        row.update(card=name, weight_gb=weight_bytes / 1e9, limit_datasheet=limit_datasheet,
                   limit_measured=limit_measured, measured_read_tb_s=bandwidth / 1e12,
                   pct_of_datasheet_limit=row["tok_s"] / limit_datasheet)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_decode.json").write_text(json.dumps({"decoders": rows}, indent=1))
    for row in rows:
        for role, info in row.get("matvec", {}).items():
            print(f"{row['variant'][:40]:40} {role:8} chosen {info['chosen']:12} "
                  f"{info['ms_all_layers']:7.3f} ms  GB/s by shape: {info['gb_s']}")
    print(f"\n{name}: {weight_bytes / 1e9:.1f} GB read per token; limit {limit_datasheet:.0f} tok/s (datasheet), "
          f"{limit_measured:.0f} tok/s (measured {bandwidth / 1e12:.2f} TB/s read)")
    print(f"{'variant':76} {'tok/s':>7} {'% of limit':>10} {'% measured':>10} {'compile s':>9} {'agree':>6}")
    for row in rows:
        print(f"{row['variant']:76} {row['tok_s']:7.1f} {row['pct_of_datasheet_limit']:10.1%} "
              f"{row['tok_s'] / limit_measured:10.1%} {row.get('compile_s', 0):9.0f} "
              f"{row.get('argmax_agreement_teacher_forced', float('nan')):6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
