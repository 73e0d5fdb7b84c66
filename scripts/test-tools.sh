#!/usr/bin/env bash
# The test suite's tools from Debian, installed only for `make test` (the demo needs neither): the browser tests drive
# Chromium through Playwright (no browser download), and the Ollama Modelfile test renders its template with Go's own
# text/template. Does nothing when both are there.
set -euo pipefail
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v go >/dev/null 2>&1 || missing="$missing golang-go"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  echo "test-tools: installing Debian's$missing" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq $missing >/dev/null
fi
