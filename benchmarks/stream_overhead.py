"""Host (Python) work per decoded token in the chat's streaming path, with the model taken out.

On a GPU the model's step is one CUDA-graph replay; everything else `stream_reply` does per token runs on the host:
the sampler's kernel launches, detokenising, the message splitter and the privacy mask (`mask_stream`). This
benchmark replaces the model with an engine that returns precomputed logits over the tiny test tokenizer's
vocabulary (400 tokens: the tensor maths is negligible, so what is timed is the Python and dispatch work), scripted
to write a realistic reply (Hebrew, emoji and a ZWJ sequence, digits, message separators), and times each layer on
replies of several lengths: constant microseconds per token at every length is O(1) per token.

    .venv/bin/python benchmarks/stream_overhead.py [--tokens 50,200,800] [--repeat 5]
    .venv/bin/python benchmarks/stream_overhead.py --before .bench/main     # the same table for an earlier tree

`--before TREE` runs this script on TREE's `talkalike` package (make it with
`mkdir -p .bench/main && git archive main talkalike tests | tar -x -C .bench/main`) and on this tree, alternately in
fresh processes, and prints both columns side by side; it also checks that both trees stream the very same events.
Rows (microseconds of this thread's CPU time per generated token, best of --repeat):
  sampler loop         `tokens()` with the reply's Sampler (penalty, no-repeat rule, temperature), no text
  detokenise + split   the text side of `_stream_reply`: the time between a token handed over and the next asked for
  + privacy mask       the same in `stream_reply`, which masks what `_stream_reply` yields (chat, serve, the API)
  stream_reply         all of stream_reply: sampler loop and text side
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the fake model writes, over and over: separators, Hebrew, emoji with ZWJ and skin tones, a phone number that
# arrives token by token, a spelled-out address, punctuation.
REPLY = ("haha ok 😂\n<|msg|>\nשלום מה קורה? חחח יאללה נתראה 🏃‍♀️ call me 054-123-4567\n<|msg|>\n"
         "I think we should meet at the café on Dizengoff at eight 👍🏽, if that suits you.\n<|msg|>\n"
         "lol pita the cat broke my scooter again 🙈 write to noa [at] example [dot] com\n<|msg|>\n")


class ScriptedEngine:
    """An engine (decode/engines) whose logits put the scripted token far ahead of the rest, precomputed."""

    def __init__(self, script: list[int], vocab: int, max_len: int):
        import torch

        self.device, self.max_len = torch.device("cpu"), max_len
        self.rows = torch.full((len(script), vocab), -20.0)
        self.rows[torch.arange(len(script)), torch.tensor(script)] = 20.0
        self.at = 0

    def prefill(self, ids):
        self.at = 0
        return self.rows[0:1]

    def step(self, token):
        self.at = min(self.at + 1, self.rows.shape[0] - 1)
        return self.rows[self.at: self.at + 1]


def build(tokens: int):
    """(twin, history, config) for a reply of exactly `tokens` tokens."""
    import dataclasses

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_tokenizer

    from talkalike.decode.config import GenerationConfig
    from talkalike.decode.turns import stop_token_ids
    from talkalike.decode.twin import Twin

    tokenizer = build_tiny_tokenizer()
    ids = tokenizer.encode(REPLY, add_special_tokens=False)
    script = (ids * (tokens // len(ids) + 2))[: tokens + 1]
    history = [{"role": "user", "content": "hey what's up? 😂"}]
    config = dataclasses.replace(GenerationConfig(), max_new_tokens=tokens, max_messages=0, seed=0, memories=0,
                                 max_context_tokens=tokens + 64)
    twin = Twin(model=None, tokenizer=tokenizer, vocab_size=len(tokenizer), max_positions=None,
                stop_ids=stop_token_ids(tokenizer, "chat"), device=torch.device("cpu"))
    twin.engines[True] = ScriptedEngine(script, len(tokenizer), tokens + 64)
    return twin, history, config


def measure_length(length: int, repeat: int) -> tuple[dict, list]:
    """({row: us per generated token}, the events stream_reply yields) for a reply of `length` tokens. Times are
    this thread's CPU time (torch runs on one thread here), so other processes on the machine barely move them."""
    import talkalike.decode.stream as stream
    from talkalike.decode.sampling import Sampler, outside
    from talkalike.decode.turns import fit_prompt, separator_ids, vocabulary

    twin, history, config = build(length)
    prompt = fit_prompt(twin, history, config)
    start = len(prompt)
    engine = twin.engines[True]
    loop, text_s = stream.tokens, [0.0]

    def timed_tokens(*args, **kwargs):  # the time between handing a token over and being asked for the next
        for token in loop(*args, **kwargs):
            handed = time.thread_time()
            yield token
            text_s[0] += time.thread_time() - handed

    def sampler_loop():
        sampler = Sampler(config, twin.vocab_size, rows=1, device=engine.device,
                          separator_ids=separator_ids(twin.tokenizer))
        blocked = outside(vocabulary(twin, [prompt], config), twin.vocab_size, engine.device)
        return list(loop(engine, prompt, config.max_new_tokens, lambda logits, seen: sampler(
            logits, seen, [config.temperature], [seen[0, start:]], blocked), twin.stop_ids))

    runs = {"sampler loop": sampler_loop,
            "detokenise + split": lambda: list(stream._stream_reply(twin, history, config, True, stream.Usage())),
            "+ privacy mask": lambda: list(stream.stream_reply(twin, history, config))}
    best: dict[str, float] = {}
    stream.tokens = timed_tokens
    try:
        for _ in range(repeat):
            for name, run in runs.items():
                text_s[0] = 0.0
                t0 = time.thread_time()
                run()
                elapsed = time.thread_time() - t0
                best[name] = min(best.get(name, float("inf")), elapsed if name == "sampler loop" else text_s[0])
                if name == "+ privacy mask":
                    best["stream_reply"] = min(best.get("stream_reply", float("inf")), elapsed)
        events = runs["+ privacy mask"]()
        assert events == runs["+ privacy mask"](), "two runs of one seeded reply differ"
    finally:
        stream.tokens = loop
    generated = len(sampler_loop())
    return {name: seconds / generated * 1e6 for name, seconds in best.items()}, events


def measure(lengths: list[int], repeat: int) -> dict:
    """{length: {row: us per token}, "events": digest of every length's events}."""
    import torch

    torch.set_num_threads(1)
    results, digest = {}, hashlib.sha256()
    for length in lengths:
        results[str(length)], events = measure_length(length, repeat)
        digest.update(json.dumps(events, ensure_ascii=False).encode())
    results["events"] = digest.hexdigest()[:16]
    return results


ROWS = ("sampler loop", "detokenise + split", "+ privacy mask", "stream_reply")


def table(columns: dict[str, dict], lengths: list[int]) -> str:
    names = list(columns)
    lines = [f"{'reply tokens':>12} {'row':14} " + " ".join(f"{n[-22:]:>22}" for n in names)]
    for length in lengths:
        for row in ROWS:
            cells = " ".join(f"{columns[n][str(length)][row]:19.1f} us" for n in names)
            lines.append(f"{length:12d} {row:14} {cells}")
    lines.append(f"{'':12} {'events digest':14} " + " ".join(f"{columns[n]['events']:>22}" for n in names))
    return "\n".join(lines)


def run_tree(tree: Path, lengths: list[int], repeat: int) -> dict:
    """This script's --json output, run in a fresh process on `tree`'s talkalike package."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "--tokens",
                          ",".join(map(str, lengths)), "--repeat", str(repeat)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="50,200,800", help="reply lengths, in tokens")
    parser.add_argument("--repeat", type=int, default=5, help="runs per row; the best is kept")
    parser.add_argument("--before", type=Path, help="an earlier tree to compare with (see the docstring)")
    parser.add_argument("--rounds", type=int, default=2, help="with --before: alternations of the two trees")
    parser.add_argument("--json", action="store_true", help="print one JSON line (used by --before)")
    args = parser.parse_args()
    lengths = [int(n) for n in args.tokens.split(",")]
    if args.json:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(ROOT)))
        print(json.dumps(measure(lengths, args.repeat)))
        return 0
    if args.before is None:
        sys.path.insert(0, str(ROOT))
        print(table({"this tree": measure(lengths, args.repeat)}, lengths))
        return 0
    columns: dict[str, dict] = {}
    for _ in range(args.rounds):  # alternate, so the machine's noise hits both alike; keep each row's best
        for name, tree in ((f"before ({args.before.name})", args.before.resolve()), ("after (this tree)", ROOT)):
            got = run_tree(tree, lengths, args.repeat)
            kept = columns.setdefault(name, got)
            for length in lengths:
                for row, value in got[str(length)].items():
                    kept[str(length)][row] = min(kept[str(length)][row], value)
    print(table(columns, lengths))
    digests = {c["events"] for c in columns.values()}
    print("same events in both trees" if len(digests) == 1 else "THE TREES STREAM DIFFERENT EVENTS")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
