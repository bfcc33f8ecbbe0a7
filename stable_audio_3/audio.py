"""Audio in and out: conversion to tensors, resampling, channel layout, files.

One resampler is used everywhere: a windowed-sinc (Hann) polyphase filter with the same kernel
as torchaudio's default `Resample` (lowpass width 6, rolloff 0.99), so inputs at any rate give the
reference's numbers without depending on torchaudio.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from .request import DEFAULT_LIMITS

SAMPLE_RATE = 44100


@lru_cache(maxsize=32)
def _sinc_kernel(orig: int, new: int, lowpass_width: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase kernel (new, 1, taps) for rates already divided by their gcd; computed in float64."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
    kernel = kernel * window * (base / orig)
    return kernel.to(torch.float32), width


MAX_KERNEL_VALUES = 1 << 22  # past this (rates with a small common divisor, 44101 Hz) taps are made per output


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int, max_length: int | None = None) -> torch.Tensor:
    """Resample along the last axis from `orig_sr` to `new_sr` (any leading shape).

    `max_length`: only the first max_length output samples are wanted, so only the input they need is
    read (the same samples as resampling everything, then cropping). Memory stays bounded for any pair
    of rates: when the polyphase kernel would be large, each output's taps are made as they are used."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return audio if max_length is None else audio[..., :max_length]
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # as _sinc_kernel's
    if max_length is not None:
        audio = audio[..., : math.ceil(max_length * orig / new) + width + orig + 1]
    shape = audio.shape
    x = audio.reshape(-1, shape[-1])
    length = x.shape[-1]
    target = math.ceil(new * length / orig)
    if new * (2 * width + orig) > MAX_KERNEL_VALUES:
        y = _resample_direct(x, orig, new, target)
    else:
        kernel, width = _sinc_kernel(orig, new)
        kernel = kernel.to(device=audio.device, dtype=audio.dtype)
        x = F.pad(x, (width, width + orig))
        y = F.conv1d(x[:, None], kernel, stride=orig)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)
    y = y[..., :target] if max_length is None else y[..., : min(target, max_length)]
    return y.reshape(*shape[:-1], -1)


def _resample_direct(x: torch.Tensor, orig: int, new: int, target: int, lowpass_width: int = 6,
                     rolloff: float = 0.99) -> torch.Tensor:
    """(rows, T) -> (rows, target) with `_sinc_kernel`'s filter, evaluated per output sample at its own
    offset (only the taps inside the filter's support), a block of outputs at a time."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    taps = torch.arange(-width, width + 2, device=x.device)
    xp = F.pad(x, (width + 1, width + 2))
    block = max(1, (1 << 22) // (len(taps) * max(1, x.shape[0])))
    out = []
    for m0 in range(0, target, block):
        m = torch.arange(m0, min(target, m0 + block), device=x.device, dtype=torch.int64)
        k = (m * orig // new)[:, None] + taps  # input samples around each output's position
        t = (k * new - m[:, None] * orig).float() * (base / (orig * new))  # exact offsets, then float32
        t = t.clamp(-lowpass_width, lowpass_width)
        window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
        t = t * math.pi
        w = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
        out.append((xp[:, k + width + 1] * w.to(x.dtype)).sum(-1))
    return torch.cat(out, dim=-1) if out else x.new_zeros(x.shape[0], 0)


def numpy_to_tensor(audio: np.ndarray, name: str = "audio") -> torch.Tensor:
    """soundfile-style array ((T,) or (T, C); float or int16/int32 PCM) -> float32 (C, T)."""
    if audio.dtype == np.int16:
        t = torch.from_numpy(audio.astype(np.float32)) / 32767
    elif audio.dtype == np.int32:
        t = torch.from_numpy(audio.astype(np.float32)) / 2147483647
    elif audio.dtype in (np.float32, np.float64, np.float16):
        t = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    else:
        raise ValueError(f"{name}: unsupported numpy dtype {audio.dtype}; allowed: float16/32/64, int16, int32")
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t.transpose(0, 1)
    raise ValueError(f"{name}: numpy audio must be (samples,) or (samples, channels), got shape {audio.shape}")


def as_channels_first(audio, name: str = "audio") -> torch.Tensor:
    """Tensor (T,), (C, T) or (1, C, T), or numpy (T,) / (T, C) -> float (C, T), validated."""
    if isinstance(audio, np.ndarray):
        t = numpy_to_tensor(audio, name)
    elif isinstance(audio, torch.Tensor):
        t = audio
        if t.dim() == 3 and t.shape[0] == 1:
            t = t[0]
        elif t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2:
            raise ValueError(
                f"{name}: expected a tensor of shape (samples,), (channels, samples) or (1, channels, samples), "
                f"got shape {tuple(audio.shape)}"
            )
        if not t.is_floating_point():
            t = t.float()
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(audio).__name__}")
    check_audio_values(t, name)
    return t


def check_audio_values(t: torch.Tensor, name: str = "audio") -> None:
    if t.shape[-1] == 0:
        raise ValueError(f"{name}: audio has zero samples; at least 1 sample is required")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: audio has zero channels; 1 or more channels are required")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: audio contains NaN or infinite samples; all samples must be finite")


def check_sample_rate(sr, name: str = "sample_rate", low: int = 1, high: int | None = None) -> int:
    """An integer number of Hz in [low, high] (NaN and infinities refused by name), else ValueError."""
    ok = not isinstance(sr, bool) and isinstance(sr, (int, np.integer, float, np.floating)) and math.isfinite(sr)
    if not (ok and int(sr) == sr and low <= sr and (high is None or sr <= high)):
        allowed = f"an integer number of Hz in [{low}, {high}]" if high else "a positive integer number of Hz"
        raise ValueError(f"{name}={sr!r} is invalid; {allowed} is required")
    return int(sr)


def set_channels(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, T) -> (channels, T): mono is duplicated, extra channels are dropped, 1 = mixdown."""
    if channels == 1:
        return audio.mean(0, keepdim=True)
    if audio.shape[0] == 1:
        return audio.repeat(channels, 1)
    return audio[:channels]


def pad_or_crop(audio: torch.Tensor, length: int) -> torch.Tensor:
    out = audio.new_zeros(audio.shape[0], length)
    n = min(length, audio.shape[-1])
    out[:, :n] = audio[:, :n]
    return out


# The input bounds of `request.Limits` (its defaults); a model's own limits are passed in where they apply.
MIN_INPUT_RATE, MAX_INPUT_RATE = DEFAULT_LIMITS.min_input_rate, DEFAULT_LIMITS.max_input_rate
MAX_INPUT_CHANNELS = DEFAULT_LIMITS.max_input_channels
MAX_INPUT_VALUES = DEFAULT_LIMITS.max_input_values


class AudioTooLarge(ValueError):
    """The input decodes to more samples x channels than allowed (found in the header or while decoding)."""


def read_audio(source: str | os.PathLike | BinaryIO, max_values: int = MAX_INPUT_VALUES,
               name: str | None = None) -> tuple[torch.Tensor, int]:
    """Read a file or file object (wav, flac, ogg, mp3 through libsndfile) -> ((C, T) float32, rate).

    Bounded before and during decoding: the header's rate (1 kHz..768 kHz), channels (1..8) and
    frames x channels are checked first, then the decode stops as soon as it passes `max_values`
    (a header may lie, or report no length)."""
    import soundfile as sf

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            raise ValueError(f"{name}: is a folder; an audio file (wav, flac, ogg or mp3) is required")
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        opened = str(path)
    else:
        name, opened = name or "audio", source
    try:
        f = sf.SoundFile(opened)
    except Exception as e:  # soundfile raises its own error types
        raise ValueError(f"{name}: not a readable audio file (wav, flac, ogg or mp3): {e}") from e
    with f:
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        if not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
            raise ValueError(f"{name}: sample rate {sr} Hz is not supported; "
                             f"{MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz is allowed")
        if not 1 <= channels <= MAX_INPUT_CHANNELS:
            raise ValueError(f"{name}: {channels} channels; 1 to {MAX_INPUT_CHANNELS} are allowed")
        too_large = (f"{name}: decodes to more than {max_values} samples x channels "
                     f"({max_values / channels / sr:.1f} s at {sr} Hz, {channels} channels); that is the limit")
        if 0 < frames and frames * channels > max_values:
            raise AudioTooLarge(too_large)
        limit = max_values // channels
        blocks, total = [], 0
        try:
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                total += block.shape[0]
                if total > limit:
                    raise AudioTooLarge(too_large)
                blocks.append(block)
        except AudioTooLarge:
            raise
        except Exception as e:
            raise ValueError(f"{name}: the audio could not be decoded: {e}") from e
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    audio = torch.from_numpy(np.ascontiguousarray(data.T))
    check_audio_values(audio, name)
    return audio, sr


SFC_SET_ADD_PEAK_CHUNK = 0x1050  # libsndfile's command number


def without_peak_chunk(f) -> None:
    """No PEAK chunk in a float WAV: libsndfile stamps it with the time of writing, so two identical
    generations would differ in a few bytes. (Call before the first write; other formats ignore it.)"""
    import soundfile as sf

    sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)


def encode_to(target, data: np.ndarray, sample_rate: int, fmt: str, metadata: dict[str, str] | None = None,
              **options) -> None:
    """Write (T, C) samples to a path or file object in `fmt` (WAV, FLAC, OGG, MP3) with its metadata
    fields (those the format keeps) and no time-stamped PEAK chunk; `options` go to libsndfile."""
    import soundfile as sf

    with sf.SoundFile(target, "w", samplerate=sample_rate, channels=data.shape[1], format=fmt, **options) as f:
        without_peak_chunk(f)
        for key, value in (metadata or {}).items():
            try:
                setattr(f, key, str(value))
            except Exception:  # not every format stores every field
                pass
        f.write(data)


def write_audio(path: str | os.PathLike, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE,
                subtype: str | None = None, metadata: dict[str, str] | None = None,
                compression_level: float | None = None, bitrate_mode: str | None = None,
                clamp: bool = True) -> Path:
    """Write (C, T) audio atomically: a temp file in the same folder, then a rename.

    `clamp=False` keeps samples outside [-1, 1] (only a float subtype such as WAV "FLOAT" stores them).

    `compression_level` (0..1) and `bitrate_mode` ('CONSTANT', 'VARIABLE', 'AVERAGE') reach libsndfile
    for compressed formats (MP3: level 0 -> 320 kbps ... 1 -> 32 kbps).
    """

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in ("WAV", "FLAC", "OGG", "MP3"):
        raise ValueError(f"output {path}: unsupported extension {path.suffix!r}; allowed: .wav, .flac, .ogg, .mp3")
    data = audio.detach().float().cpu()
    data = (data.clamp(-1, 1) if clamp else data).numpy().T
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        extra = {}
        if compression_level is not None:
            extra["compression_level"] = compression_level
        if bitrate_mode is not None:
            extra["bitrate_mode"] = bitrate_mode
        encode_to(tmp, data, sample_rate, fmt, metadata, subtype=subtype, **extra)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


UNKNOWN_LENGTH = 0xFFFFFFFF  # RIFF and data sizes of a stream: "as long as it goes"


def wav_header(sample_rate: int, channels: int, bit_depth: int) -> bytes:
    """A WAV header for a stream of unknown length: PCM (16, 24 bit) or IEEE float (32 bit)."""
    fmt_tag = 3 if bit_depth == 32 else 1
    block = channels * bit_depth // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, sample_rate, sample_rate * block, block, bit_depth)
    return (b"RIFF" + struct.pack("<I", UNKNOWN_LENGTH) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", UNKNOWN_LENGTH))


def pcm_bytes(audio, bit_depth: int) -> bytes:
    """(C, T) float audio -> interleaved little-endian samples (16 / 24-bit integers, or 32-bit float)."""
    x = np.ascontiguousarray(audio.detach().float().cpu().numpy().T)  # (T, C), interleaved
    if bit_depth == 32:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    scale = 2 ** (bit_depth - 1) - 1
    ints = np.round(np.clip(x, -1, 1) * scale).astype("<i4")
    if bit_depth == 16:
        return ints.astype("<i2").tobytes()
    return ints.view(np.uint8).reshape(*ints.shape, 4)[..., :3].tobytes()  # the low three bytes of each
