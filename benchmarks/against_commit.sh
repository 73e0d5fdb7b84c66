#!/usr/bin/env bash
# Run one benchmark on an earlier commit's tree and on this tree, alternating, in one session on one machine, so a
# refactor can show it changed no figure (the machine's noise hits both sides alike).
#
#   git archive REV talkalike benchmarks tests pyproject.toml | (mkdir -p .bench/REV && tar -x -C .bench/REV)
#   benchmarks/against_commit.sh .bench/REV 2 gpu_decode.py --variants 2
#   benchmarks/against_commit.sh .bench/REV 2 decode_cpu.py --skip-cold-start --rounds 2
#
# Arguments: the earlier tree, the number of rounds, then the benchmark script (in benchmarks/) and its arguments.
# Each run's output is printed under a header naming the tree and the round; $OUT (if set) gets one log per run.
set -uo pipefail
old=$1 rounds=$2 script=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
for round in $(seq 1 "$rounds"); do
  for side in previous current; do
    tree=$here
    [ "$side" = previous ] && tree=$(cd "$old" && pwd)
    echo "=== $side commit ($tree), round $round: $script $*"
    log=${OUT:-/tmp}/${script%.py}-$side-$round.log
    (cd "$tree" && PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" "$python" "benchmarks/$script" "$@") 2>&1 | tee "$log" | grep -v "^{" | tail -25
  done
done
