"""How long the facts probe takes on a trained run, tuned and base, as `talkalike eval` runs it (every question
answered greedily and sampled three times, in one batch); prints the seconds and a digest of every reply, so two
trees can show the same replies (benchmarks/against_commit.sh).

    TALKALIKE_MODELS=.cache/models .venv/bin/python benchmarks/facts_probe.py --home HOME --run noa-demo
"""

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SAMPLE_FACTS = Path(__file__).resolve().parents[1] / "examples" / "WhatsApp Chat with Noa.facts.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="data folder holding the run")
    parser.add_argument("--run", default="noa-demo")
    parser.add_argument("--facts", default=str(SAMPLE_FACTS))
    args = parser.parse_args()
    from talkalike.decode.twin import load_twin
    from talkalike.evaluate.evaluate import EvalConfig
    from talkalike.evaluate.facts import greedy_then_sampled, read_facts, twin_generate_fn

    twin = load_twin(args.run, None, Path(args.home))
    eval_config = EvalConfig()
    config = dataclasses.replace(twin.defaults, max_new_tokens=eval_config.max_new_tokens, seed=eval_config.seed)
    histories = [[{"role": "user", "content": fact.question}] for fact in read_facts(args.facts)]
    for use_adapter in (True, False):
        start = time.perf_counter()
        replies = greedy_then_sampled(twin_generate_fn(twin, config, use_adapter), histories,
                                      eval_config.fact_samples, config.temperature or 1.0)
        seconds = time.perf_counter() - start
        digest = hashlib.sha256(json.dumps(replies, ensure_ascii=False).encode()).hexdigest()[:16]
        print(f"{'tuned' if use_adapter else 'base'}: {len(histories)} questions x {eval_config.fact_samples} "
              f"replies in {seconds:.1f} s (replies digest {digest})", flush=True)


if __name__ == "__main__":
    main()
