#!/usr/bin/env bash
# Install stable-audio-3 into ./.venv (if needed) and run the main job: generate audio with the
# default model (the built-in `demo`, shipped inside the package: no network, no account).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
mkdir -p outputs
HF_HUB_OFFLINE=1 .venv/bin/stable-audio -p "sine wave a4" --duration 3 --seed 42 -o outputs/demo.wav "$@"
