"""Per-turn token lengths of the bundled sample chat, for the GPU benchmark's synthetic samples.

    talkalike import "examples/WhatsApp Chat with Noa.txt" && talkalike dataset --me Noa --out /tmp/ds
    python benchmarks/chat_lengths.py /tmp/ds/train.jsonl /tmp/gemma-tokenizer-folder

Writes benchmarks/data/chat_turn_tokens.json: one list per sample of [role, tokens] pairs, counted with the given
tokenizer on each turn's content (the GPU machine has no tokenizer or network, so the lengths travel as data).
"""

import json
import sys
from pathlib import Path


def main() -> int:
    from transformers import AutoTokenizer

    rows, tokenizer = Path(sys.argv[1]), AutoTokenizer.from_pretrained(sys.argv[2])
    samples = []
    for line in rows.read_text().splitlines():
        messages = json.loads(line)["messages"]
        samples.append([[m["role"], len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])]
                        for m in messages])
    out = Path(__file__).resolve().parent / "data" / "chat_turn_tokens.json"
    out.write_text(json.dumps(samples))
    lengths = sorted(sum(n + 5 for _, n in s) for s in samples)
    print(f"{len(samples)} samples; median {lengths[len(lengths) // 2]} tokens a sample -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
