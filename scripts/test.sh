#!/usr/bin/env bash
# Install stable-audio-3 with its test tools into ./.venv (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test,ui,server,ray]"
export HF_HUB_OFFLINE=1
HF_HOME="$(mktemp -d)"
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT
.venv/bin/ruff check stable_audio_3 tests benchmarks
# pytest exits 5 when no test was collected: that is a failure too.
.venv/bin/python -m pytest -q "$@"
