"""The `stable-audio` command line, run as a user runs it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch
from golden import fixture_dir

from stable_audio_3.audio import read_audio, write_audio


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stable_audio_3.cli", *args], capture_output=True, text=True)


def test_encode_decode_roundtrip(tmp_path: Path) -> None:
    model = str(fixture_dir("tiny-small"))
    t = torch.arange(44100) / 44100
    write_audio(tmp_path / "tone.wav", torch.stack([torch.sin(2 * math.pi * 220 * t)] * 2) * 0.5)
    enc = run("encode", str(tmp_path / "tone.wav"), "--model", model, "-o", str(tmp_path / "z.safetensors"))
    assert enc.returncode == 0, enc.stderr
    assert "latents (1, 32, 12)" in enc.stdout
    dec = run("decode", str(tmp_path / "z.safetensors"), "--model", model, "--seed", "1",
              "-o", str(tmp_path / "out.flac"))
    assert dec.returncode == 0, dec.stderr
    audio, sr = read_audio(tmp_path / "out.flac")
    assert sr == 44100 and audio.shape == (2, 12 * 4096)


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    res = run("encode", str(tmp_path / "missing.wav"), "--model", str(fixture_dir("tiny-small")))
    assert res.returncode == 1
    assert res.stderr.startswith("stable-audio: error: audio file not found")
    assert "Traceback" not in res.stderr
    res = run("encode", "x.wav", "--model", "no-such-model")
    assert res.returncode == 1 and "unknown model 'no-such-model'" in res.stderr
