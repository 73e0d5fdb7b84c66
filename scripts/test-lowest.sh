#!/usr/bin/env bash
# Check the lower bounds in pyproject.toml: build a fresh virtual environment (.venv-lowest) holding the lowest
# release that pyproject.toml allows of each direct dependency (uv's `--resolution lowest-direct`), and run the tests
# that touch training and decoding in it. `make test-lowest` runs this, and so does CI after `make test`.
#
#     scripts/test-lowest.sh [VENV]
#
# torch is the one dependency not taken at its lowest: PyPI has torch only as a CUDA build of several GB, so, like
# setup.sh, this installs the CPU build first and holds uv to that version. The other floors are what is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-lowest}
# Fresh every time: reusing a venv that holds newer releases would let them stand in for the lowest ones.
rm -rf "$venv"
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q uv
$pip install -q torch==2.13.0 || $pip install -q torch --index-url https://download.pytorch.org/whl/cpu
torch=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')
echo "torch==$torch" > "$venv/constraints.txt"
"$venv/bin/uv" pip install -q --python "$venv/bin/python" --resolution lowest-direct \
  --constraint "$venv/constraints.txt" -e '.[dev]'
"$venv/bin/uv" pip check --python "$venv/bin/python"
echo "test-lowest: $("$venv/bin/python" -m pip list 2>/dev/null \
  | grep -iE '^(torch|transformers|trl|peft|accelerate|datasets|safetensors|gguf) ' | tr -s ' ' | paste -sd,)" >&2
# The tests that load, train, merge, decode and export models (the data stages import no model library), and of the
# slow tests with the real embedded model the two that meet the floors first: its GGUF converted again with the lowest
# transformers and gguf, and a few training steps with the lowest peft and trl. The other slow ones (against llama.cpp's
# own conversion, a reply streamed, two gloo ranks) take the export, decode and distributed paths that the fast tests
# here take with tiny models; `make test` runs them, and leaving them out here keeps CI inside its 90 minutes. The
# embedded model converted by `make test` is reused from .cache/models.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow and not gpu" \
  tests/train tests/decode tests/export tests/test_template.py
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/train/test_model.py::test_the_embedded_gguf_converts_once_under_concurrency_and_writes_sensible_text \
  tests/train/test_train.py::test_the_embedded_model_trains_a_few_steps_end_to_end
