#!/usr/bin/env bash
# One device call that checks a change on a CUDA GPU: the GPU tests, then the decode benchmark on this tree and on an
# earlier commit's, alternating (benchmarks/against_commit.sh). Logs go to $OUT.
#
#   git archive REV talkalike benchmarks tests pyproject.toml | (mkdir -p .bench/prev && tar -x -C .bench/prev)
#   benchmarks/gpu_check.sh [ROUNDS]        # with the wheels the image lacks in .whl/ (README "GPU")
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu-check} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi -L
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/decode/test_engines.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -30
if [ -d .bench/prev ]; then
  benchmarks/against_commit.sh .bench/prev "${1:-2}" gpu_decode.py --variants 2
fi
