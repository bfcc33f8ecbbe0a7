#!/usr/bin/env bash
# Install stable-audio-3 into ./.venv (if needed) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
mkdir -p outputs
GOLDEN="${SA3_GOLDEN:-../shared/golden}"
# Until the built-in demo model ships, the main job round-trips a test signal through the SAME-S
# autoencoder of the tiny reference fixture. Its weights are RANDOM: the output is not meant to
# sound like the input; it proves the install, the model code and the audio I/O work end to end.
echo "NOTE: using the tiny SAME-S of $GOLDEN/tiny-small, whose weights are random."
.venv/bin/python - <<'PY'
import math, torch
from stable_audio_3.audio import write_audio
t = torch.arange(3 * 44100) / 44100
tone = torch.stack([torch.sin(2 * math.pi * 220 * t), torch.sin(2 * math.pi * 330 * t)]) * 0.5
write_audio("outputs/test_tone.wav", tone, 44100)
PY
.venv/bin/stable-audio encode outputs/test_tone.wav --model "$GOLDEN/tiny-small" -o outputs/test_tone.latents.safetensors
.venv/bin/stable-audio decode outputs/test_tone.latents.safetensors --model "$GOLDEN/tiny-small" --seed 0 -o outputs/roundtrip.wav
