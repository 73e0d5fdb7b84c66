"""Fast-start benchmark: how long `talkalike --help`, `parse` and `import` take to start and finish on a small chat,
beside bare Python and beside the imports a CLI that loads its model stack up front would pay (torch, transformers).

Each command runs `--runs` times in a fresh interpreter; the table shows the median and the fastest run.
Run: `nice .venv/bin/python benchmarks/fast_start.py [--runs 10]`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "tests" / "fixtures" / "import" / "WhatsApp Chat with Maya.txt"


def timed(argv: list[str], runs: int) -> tuple[float, float]:
    """Median and fastest wall seconds of `argv` over `runs` fresh processes."""
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as home:
        commands = [
            ("python -c pass (floor)", [python, "-c", "pass"]),
            ("talkalike --help", [python, "-m", "talkalike", "--help"]),
            ("talkalike parse CHAT", [python, "-m", "talkalike", "parse", str(CHAT)]),
            ("talkalike import CHAT", [python, "-m", "talkalike", "--home", home, "import", str(CHAT)]),
            ("python -c 'import torch' (avoided)", [python, "-c", "import torch"]),
            ("python -c 'import transformers, torch' (avoided)", [python, "-c", "import transformers, torch"]),
        ]
        rows = [(name, *timed(argv, args.runs)) for name, argv in commands]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {args.runs} runs each")
    print("| command | median s | fastest s |\n|---|---:|---:|")
    for name, median, fastest in rows:
        print(f"| {name} | {median:.2f} | {fastest:.2f} |")


if __name__ == "__main__":
    main()
