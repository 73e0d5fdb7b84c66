"""Several people at once: `talkalike serve` answering N streaming requests one at a time and then all at once, queued
(serve before batching: `ServeSettings(batch_rows=1)`) against batched (decode/live.py).

    # CPU: the trained demo run (copy its home first if you mind sqlite touching it)
    nice -n 10 .venv/bin/python benchmarks/serve_concurrency.py --home HOME --run noa-demo
    # GPU: a Mistral-7B-shaped model with random weights in bf16 (benchmarks/gpu_decode.py's), no run folder
    .venv/bin/python benchmarks/serve_concurrency.py --random-7b
    # a smoke test of the mechanics in seconds: the tests' tiny random model
    .venv/bin/python benchmarks/serve_concurrency.py --tiny --max-tokens 16

Both modes start the real app (serve.create_app) under uvicorn on a free loopback port in this process and stream
from the OpenAI-compatible endpoint with httpx (asyncio, in a client process of its own): fixed prompts (one per
stream), fixed max_tokens, each request with its own fixed seed, so that both modes generate the same tokens. The N
requests are sent first one at a time (each once the one before has ended: the single-stream row, the same prompts
and tokens as the concurrent row), then all together. Tokens are the server's own count (usage,
stream_options.include_usage). Time to first token is from sending a request to its first streamed text (the
response starts once the reply's first text exists). Aggregate tok/s is every request's tokens over the wall time
(one at a time: the sum of the requests' own times; together: from sending to the last stream's end); per-stream
tok/s is one stream's tokens over its own request time (queueing included), median over the streams; "x single
stream" is the concurrent row's aggregate over the one-at-a-time row's, in the same mode. Prints one markdown table,
and writes it as JSON to --out.

The random 7B model's head gives every token past the small test tokenizer's (and its special ones) a zero row, and
its requests are greedy (--temperature 0), so draws stay on tokens that decode to text and never end the turn early:
every stream runs to max_tokens, and the whole 32k-column head is still computed, as for the real model. The run
samples with its own settings (generation.json) and ends its turns where it would for a user.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = [
    "hey what are you up to tonight?",
    "did you see what happened at the beach today",
    "שלום מה קורה? נפגשים מחר?",
    "can you send me the address of the café",
    "lol the cat broke my scooter again",
    "how was the exam? tell me everything",
    "are we still on for dinner at eight",
    "I think we should plan the trip this weekend, what do you say",
    "what did your mom say about it",
    "ok I'm outside, where are you",
    "do you want to come to the concert on friday",
    "that movie was so long haha",
    "remind me what we need for the party",
    "I'm so tired today, work was crazy",
    "good morning! sleep well?",
    "where did you park",
]


TIMES: dict[int, dict[str, list[float]]] = {}  # rows in a step -> "step", "draw", "gap" (seconds each)


def profile_worker() -> None:
    """Times live.Live's worker from outside: each batched step (its draw included, up to the read-back that waits
    for the device), the draw's host time (sampling.Together), and the gap from a step's end to the next one's start
    (the worker's loop, joins, and waiting for the GIL)."""
    from talkalike.decode import live, sampling

    step, draw, last = live.Live._step, sampling.Together.__call__, [None]

    def timed_step(self, use_adapter):
        rows = len(self.lanes[use_adapter].ids)
        times = TIMES.setdefault(rows, {"step": [], "draw": [], "gap": []})
        start = time.perf_counter()
        if last[0] is not None:
            times["gap"].append(start - last[0])
        step(self, use_adapter)
        last[0] = time.perf_counter()
        times["step"].append(last[0] - start)

    def timed_draw(self, samplers, *args):
        start = time.perf_counter()
        drawn = draw(self, samplers, *args)
        TIMES.setdefault(len(samplers), {"step": [], "draw": [], "gap": []})["draw"].append(time.perf_counter() - start)
        return drawn

    live.Live._step, sampling.Together.__call__ = timed_step, timed_draw


def random_7b_twin():
    """A Mistral-7B-shaped twin with random bf16 weights on CUDA and the tests' tiny tokenizer."""
    import torch
    from conftest import SPECIAL_TOKENS, build_tiny_tokenizer
    from gpu_decode import build_model

    from talkalike.decode.twin import Twin

    model = build_model()
    tokenizer = build_tiny_tokenizer()
    with torch.no_grad():  # only tokens that decode to text and never end the turn (see the module docstring)
        model.lm_head.weight[len(tokenizer):] = 0
        model.lm_head.weight[: len(SPECIAL_TOKENS)] = 0
    return Twin.of(model, tokenizer, name="twin7b", persona="Twin")


def tiny_twin():
    """The tests' tiny random Gemma: the mechanics only, in seconds."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    from talkalike.decode.twin import Twin

    tokenizer = build_tiny_tokenizer()
    return Twin.of(build_tiny_model(len(tokenizer)).eval(), tokenizer, name="tiny", persona="Tiny")


def run_twin(home: str, run: str):
    """The run as `talkalike serve RUN` loads it."""
    from talkalike.decode.twin import load_twin
    from talkalike.home import resolve_home

    return load_twin(run, None, resolve_home(home), batched=True)


async def one_stream(client, url: str, model: str, prompt: str, fields: dict) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}} | fields
    started = time.perf_counter()
    first, usage = None, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        assert response.status_code == 200, await response.aread()
        # Events end at a line feed (the SSE rule): aiter_lines() would also split at U+2028 or U+0085 inside a
        # chunk's JSON text, which a random model's reply can hold.
        buffered = b""
        async for data in response.aiter_bytes():
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
    ended = time.perf_counter()
    return {"started": started, "first": first or ended, "ended": ended, "tokens": usage["completion_tokens"]}


def one_at_a_time(url: str, model: str, streams: int, max_tokens: int, temperature: float | None) -> dict:
    """The same `streams` requests as streams_at_once, each sent alone once the one before has ended; the row (the
    single-stream rate over the same prompts and tokens, not over one prompt whose reply may be a word long)."""
    parts = [streams_at_once(url, model, 1, max_tokens, temperature, first=i) for i in range(streams)]
    tokens, wall = sum(p["tokens"] for p in parts), sum(p["wall_s"] for p in parts)
    ttft = [p["ttft_max_s"] for p in parts]
    return {"streams": 1, "tokens": tokens, "wall_s": wall, "aggregate_tok_s": tokens / wall,
            "per_stream_tok_s": statistics.median(p["per_stream_tok_s"] for p in parts),
            "ttft_median_s": statistics.median(ttft), "ttft_max_s": max(ttft),
            "tokens_per_stream": [p["tokens"] for p in parts]}


def streams_at_once(url: str, model: str, streams: int, max_tokens: int, temperature: float | None,
                    first: int = 0) -> dict:
    """`streams` requests sent together, each with its own prompt and seed (in the client process), the first
    `first` of the list skipped; the row."""
    import asyncio

    import httpx

    async def run():
        limits = httpx.Limits(max_connections=streams)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:
            requests = []
            for i in range(first, first + streams):
                fields = {"max_tokens": max_tokens, "seed": 1000 + i}
                if temperature is not None:
                    fields["temperature"] = temperature
                requests.append(one_stream(client, url, model, PROMPTS[i % len(PROMPTS)], fields))
            t0 = time.perf_counter()
            return t0, await asyncio.gather(*requests)

    t0, results = asyncio.run(run())
    wall = max(r["ended"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["first"] - r["started"] for r in results]
    return {"streams": streams, "tokens": tokens, "wall_s": wall, "aggregate_tok_s": tokens / wall,
            "per_stream_tok_s": statistics.median(r["tokens"] / (r["ended"] - r["started"]) for r in results),
            "ttft_median_s": statistics.median(ttft), "ttft_max_s": max(ttft),
            "tokens_per_stream": [r["tokens"] for r in results]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-7b", action="store_true", help="GPU: a Mistral-7B-shaped model, random weights")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random model: a smoke test")
    parser.add_argument("--home", help="data folder holding the run (CPU mode)")
    parser.add_argument("--run", default="noa-demo")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: serve's, one per physical core)")
    parser.add_argument("--temperature", type=float, help="for every request (default: the run's; 0 with --random-7b)")
    parser.add_argument("--modes", default="queued,batched",
                        help="queued, batched, and on CUDA batched-sdpa (the slots' attention over every position)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/serve-concurrency"))
    parser.add_argument("--profile", action="store_true",
                        help="also time the batch worker: each step, its draw, and the gap before the next step")
    args = parser.parse_args()
    if args.profile:
        profile_worker()
    import multiprocessing

    from fake_twin import live_server

    from talkalike.frontends.serve import ServeSettings, create_app

    # The clients run in a process of their own: in this one they would take the server's GIL to parse their streams.
    clients = multiprocessing.get_context("spawn").Pool(1)

    def fire(url, streams, max_tokens, alone=False):
        return clients.apply(one_at_a_time if alone else streams_at_once,
                             (url, twin.name, streams, max_tokens, temperature))

    temperature = 0.0 if args.random_7b and args.temperature is None else args.temperature
    twin = random_7b_twin() if args.random_7b else tiny_twin() if args.tiny else run_twin(args.home, args.run)
    device = str(twin.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for mode in args.modes.split(","):
        from talkalike.decode import slots

        slots.ATTENTION = "sdpa" if mode == "batched-sdpa" else "triton"
        # No 503s: queued streams wait as long as the ones before them take.
        settings = ServeSettings(batch_rows=1 if mode == "queued" else max(args.streams, 2), queue_timeout_s=3600)
        app = create_app(twin, settings)
        with live_server(app) as url:
            fire(url, 2, 4)  # warm-up: engines built (and captured on a GPU), the batch's first steps
            for alone in (True, False):
                row = {"mode": mode} | fire(url, args.streams, args.max_tokens, alone)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            if app.state.live is not None:
                print(f"{mode}: widest batch step {app.state.live.widest} rows", file=sys.stderr)
    single = {row["mode"]: row["aggregate_tok_s"] for row in rows if row["streams"] == 1}
    print(f"\n{twin.name} on {device}, max_tokens {args.max_tokens}\n")
    print("| mode | streams | tokens | wall s | aggregate tok/s | per-stream tok/s (median) | TTFT median s "
          "| TTFT max s | x single stream |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['mode']} | {row['streams']} | {row['tokens']} | {row['wall_s']:.1f} | "
              f"{row['aggregate_tok_s']:.1f} | {row['per_stream_tok_s']:.1f} | {row['ttft_median_s']:.2f} | "
              f"{row['ttft_max_s']:.2f} | {row['aggregate_tok_s'] / single[row['mode']]:.2f}x |")
    if args.profile:
        for rows_in_step in sorted(TIMES, reverse=True)[:2]:
            times = TIMES[rows_in_step]
            print(f"\nworker, steps of {rows_in_step} rows ({len(times['step'])} steps), median ms: " + ", ".join(
                f"{name} {statistics.median(values) * 1e3:.2f}" for name, values in times.items() if values))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_concurrency.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
