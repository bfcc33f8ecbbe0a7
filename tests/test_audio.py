"""Resampling, conversions and atomic file writing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_audio_3.audio import (
    as_channels_first,
    numpy_to_tensor,
    read_audio,
    resample,
    set_channels,
    write_audio,
)


@pytest.mark.parametrize("orig,new", [(48000, 44100), (22050, 44100), (16000, 44100), (44100, 44100),
                                      (96000, 44100), (8000, 44100)])
def test_resample_length_and_tone(orig: int, new: int) -> None:
    n = orig // 2
    t = torch.arange(n) / orig
    tone = torch.sin(2 * math.pi * 440 * t).unsqueeze(0)
    out = resample(tone, orig, new)
    assert out.shape == (1, math.ceil(new * n / orig))
    ref = torch.sin(2 * math.pi * 440 * torch.arange(out.shape[-1]) / new)
    mid = slice(out.shape[-1] // 4, 3 * out.shape[-1] // 4)  # away from the zero-padded edges
    assert (out[0, mid] - ref[mid]).abs().max() < 2e-3


def test_resample_removes_content_above_the_new_nyquist() -> None:
    t = torch.arange(96000) / 96000
    high = torch.sin(2 * math.pi * 30000 * t)  # well above the new 22.05 kHz Nyquist
    out = resample(high, 96000, 44100)
    assert out[2000:-2000].abs().max() < 0.02


def test_resample_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="sample rates must be positive"):
        resample(torch.zeros(10), 0, 44100)


def test_numpy_conversions() -> None:
    assert torch.equal(numpy_to_tensor(np.array([32767, -32767], dtype=np.int16)), torch.tensor([[1.0, -1.0]]))
    stereo = np.zeros((10, 2), dtype=np.float64)
    stereo[:, 1] = 0.5
    t = numpy_to_tensor(stereo)
    assert t.shape == (2, 10) and t.dtype == torch.float32 and t[1, 0] == 0.5
    i32 = numpy_to_tensor(np.array([2147483647], dtype=np.int32))
    assert torch.allclose(i32, torch.ones(1, 1))


def test_channel_layouts() -> None:
    mono = torch.randn(1, 5)
    assert torch.equal(set_channels(mono, 2), mono.repeat(2, 1))
    surround = torch.randn(6, 5)
    assert torch.equal(set_channels(surround, 2), surround[:2])
    assert as_channels_first(torch.randn(7)).shape == (1, 7)
    assert as_channels_first(torch.randn(1, 2, 7)).shape == (2, 7)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_write_then_read(tmp_path: Path, ext: str) -> None:
    t = torch.arange(44100) / 44100
    audio = torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 660 * t)]) * 0.5
    path = write_audio(tmp_path / f"tone.{ext}", audio, 44100, metadata={"title": "a tone"})
    back, sr = read_audio(path)
    assert sr == 44100 and back.shape[0] == 2
    assert abs(back.shape[-1] - 44100) < 3000  # lossy codecs add priming frames
    if ext in ("wav", "flac"):
        assert (back[:, :44100] - audio).abs().max() < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tone.{ext}"]  # no temp file left behind


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NOT_A_SUBTYPE"):
        write_audio(tmp_path / "x.wav", torch.zeros(2, 100), 44100, subtype="NOT_A_SUBTYPE")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"unsupported extension '\.aiff'; allowed: \.wav"):
        write_audio(tmp_path / "x.aiff", torch.zeros(2, 100), 44100)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        read_audio(tmp_path / "nope.wav")
