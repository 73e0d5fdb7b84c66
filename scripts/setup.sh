#!/usr/bin/env bash
# Create or reuse the virtual environment and install talkalike with its test tools.
# Without a CUDA GPU it installs the CPU build of torch first, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
venv=${1:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras='.[dev,gpu]'
else
  echo "setup: no CUDA GPU found, installing the CPU build of torch" >&2
  $pip install -q torch==2.13.0 || $pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  extras='.[dev]'
fi
# From Debian: a C compiler for the WhatsApp parser's scanner (built by the install below; without one the parser
# runs its pure-Python pass, ~3x slower, and the test that the fast path is built fails). The test suite's own tools
# (Chromium, Go) come from scripts/test-tools.sh, which only `make test` runs.
if ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's gcc" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq gcc >/dev/null
fi
$pip install -q -e "$extras"
