#!/usr/bin/env bash
# One device call's worth of GPU measurements (a call may run 10 minutes), each step under its own time limit, every
# log under $OUT. Wheels come from benchmarks/device_wheels.sh; carry [".whl", ".whl-unsloth"].
#
#   benchmarks/gpu_session.sh decode   # GPU tests of the kernels, the chat's rate beside the bare engine (~6 min)
#   benchmarks/gpu_session.sh train    # talkalike's rows (every token's loss, the default), Unsloth's, after warm-ups
#   benchmarks/gpu_session.sh one      # the first two's most needed parts, for when one call is all there is
#   benchmarks/gpu_session.sh extra    # the sampler's table; 8 rows with and without lora-add, fused AdamW
#   benchmarks/gpu_session.sh profile  # where a step's time goes: the default, 8 rows, fused AdamW, each profiled
#                                      # (VARIANTS= other rows; TESTS= a pytest -k of GPU tests to run first;
#                                      # STACK=1 Python stacks: host time by function)
#   benchmarks/gpu_session.sh speedups # the dropout kernels' GPU tests and tiles, then 8 rows without each new speed-up
#   benchmarks/gpu_session.sh default  # the training GPU tests; the default against the original recipe, the
#                                      # fourteenth and sixteenth sessions' defaults, without each of the last three,
#                                      # after a warm-up row; the 262k-vocabulary model (TESTS=, VARIANTS=,
#                                      # GEMMA_VARIANTS= others)
#   benchmarks/gpu_session.sh budgets  # the offloading GPU tests; the default within memory budgets of 12 GB, 24 GB
#                                      # and 90% of the card (layers run whole instead of recomputed)
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu-session} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
site() {  # folder, wheels...: install the carried wheels into a folder of their own
  local folder=$1
  shift
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$folder" "$@"
}
step() {  # seconds, log name, command...
  local seconds=$1 log=$2
  shift 2
  echo "== $* (limit ${seconds} s)"
  local start=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$log.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$log.log"
  echo "== rc $rc after $((SECONDS - start)) s"
}
nvidia-smi -L
site /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
MODEL=${MODEL:-mistral-7b}
case "${1:-decode}" in
  decode)
    step 170 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "lean or fused or sampler"
    step 360 decode python3 benchmarks/gpu_decode.py --variants 2 --chat-run
    ;;
  train)
    step 280 train python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants "${TRAIN_VARIANTS:-ours,ours,ours-persona}"  # (the first row of a process warms it up)
    if [ -d .whl-unsloth ]; then  # Unsloth's own packages over the image's transformers 5.17 (not ours)
      site /tmp/site-unsloth .whl-unsloth/*.whl .whl/bitsandbytes-*.whl .whl/phonenumbers-*.whl .whl/python_stdnum-*.whl
      PYTHONPATH=/tmp/site-unsloth step 260 unsloth python3 benchmarks/gpu_unsloth.py --models "$MODEL" --steps 6 \
        --variants "${UNSLOTH_VARIANTS:-unsloth,unsloth-nodropout,unsloth}"
    fi
    ;;
  one)  # what matters most when a single call is all there is: decode's, then the default against it without lora-add
    step 130 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "lean or fused or sampler"
    step 280 decode python3 benchmarks/gpu_decode.py --variants 2 --chat-run
    step 110 train python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants ours-persona,ours-persona-noadd
    ;;
  extra)
    step 60 sampler python3 benchmarks/gpu_sampler.py
    step 500 extra python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants ours-persona-b8,ours-persona-b8-noadd,ours-persona-adam,ours-persona-b8-adam
    ;;
  speedups)
    step 100 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "dropout_kernels or replayed"
    step 150 kernels python3 benchmarks/gpu_lora_kernels.py
    [ -f "$OUT/lora_kernels.json" ] && export LORA_KERNELS_CONFIG=$OUT/lora_kernels.json
    step 320 speedups python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants "${VARIANTS:-ours-persona-b8-before,ours-persona-b8,ours-persona-b8-nokernels,ours-persona-b8-norope,\
ours-persona-b8-norecompute,ours-persona-b8-before,ours-persona-before,ours-persona}"
    ;;
  default)
    step 150 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
      -k "${TESTS:-lean or dropout_kernels or replayed or qlora or flat or packed or offloaded or nf4 or one_launch \
or scaled or prefetch}"
    step 300 default python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants "${VARIANTS:-ours-persona,baseline,ours-persona,ours-persona-sixteenth,ours-persona,\
ours-persona-noprefetch,ours-persona-noscaled,ours-persona-nogqa,ours-persona,ours-persona-b4-before}"
    step 130 gemma python3 benchmarks/gpu_train.py --models gemma-1b-256k --steps 6 \
      --variants "${GEMMA_VARIANTS:-ours-persona,baseline,ours-persona,ours-persona-sixteenth,ours-persona}"
    ;;
  budgets)  # selective recomputation: the default against memory budgets of 12 GB, 24 GB and the card's
    step 100 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "${TESTS:-offloaded}"
    step 300 budgets python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 \
      --variants "${VARIANTS:-ours-persona,baseline,ours-persona,ours-persona-mem12,ours-persona-mem24,\
ours-persona-mem80,ours-persona}"
    ;;
  profile)  # TESTS="offloaded or flat": those GPU tests first
    [ -n "${TESTS:-}" ] && step 120 tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "$TESTS"
    step 560 profile python3 benchmarks/gpu_train.py --models "$MODEL" --steps 6 --profile ${STACK:+--stack} \
      --variants "${VARIANTS:-ours-persona,ours-persona-b8,ours-persona-adam,ours-persona-b8-adam}"
    grep -A 70 "^profiled step" "$OUT/profile.log" | head -n 300
    ;;
  *) echo "usage: $0 decode|train|one|extra|profile|speedups|default|budgets" >&2; exit 2 ;;
esac
