"""From generated audio to files, the same way on the CLI, the web page and the server.

Each item is cut to its own duration, gets one gain so its peak stays under the format's ceiling
(never sample-by-sample clipping), carries metadata that reproduces it, and is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .request import GenerationRequest

OUTPUT_FORMATS = (".wav", ".flac", ".ogg", ".mp3")
# libsndfile subtypes per bit depth; 32-bit WAV is float (what the reference writes), FLAC stops at 24.
BIT_DEPTHS = {".wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, ".flac": {16: "PCM_16", 24: "PCM_24"}}
DEFAULT_BIT_DEPTH = {".wav": 32, ".flac": 24}
# Constant MP3 bitrates (kbps) of MPEG-1 layer III at 44.1 kHz. libsndfile maps compression_level
# 0..1 linearly onto 320..32 kbps and LAME picks the nearest legal rate (measured with libsndfile
# 1.2.2); level 1.0 itself is refused, so 32 kbps is not offered.
MP3_BITRATES = (320, 256, 224, 192, 160, 128, 112, 96, 80, 64, 56, 48, 40)
DEFAULT_MP3_BITRATE = 320
# Peak ceilings (dBFS): lossless files keep 0.1 dB of headroom; lossy codecs overshoot the input's
# peaks when decoded, so they get 1 dB.
PEAK_CEILING_DB = {".wav": -0.1, ".flac": -0.1, ".ogg": -1.0, ".mp3": -1.0}


def item_audio(audio, request: GenerationRequest, index: int, sample_rate: int):
    """Item `index` of a batch (B, C, T) cut to its own duration (a resolved request has one per item)."""
    return audio[index, :, : int(request.duration[index] * sample_rate)]


def item_seed(seeds: list[int], index: int) -> int:
    """The seed that reproduces item `index` (a run reports one per item; a shared seed is repeated)."""
    return seeds[index]


def limit_peak(audio, ceiling_db: float):
    """One gain for the whole item so that its peak is at most `ceiling_db` dBFS; quieter audio is
    left alone. Returns (audio, gain in dB; 0.0 when untouched). Never clips sample by sample."""
    ceiling = 10 ** (ceiling_db / 20)
    peak = float(audio.abs().max()) if audio.numel() else 0.0
    if not math.isfinite(peak):
        raise ValueError("the generated audio contains NaN or infinite samples")
    if peak <= ceiling:
        return audio, 0.0
    return audio * (ceiling / peak), 20 * math.log10(ceiling / peak)


def settings_comment(request: GenerationRequest, seeds: list[int], index: int, model: str,
                     loras: list[tuple[str, float]] | None = None) -> str:
    """The settings that reproduce item `index` of a resolved request, as one line."""
    parts = [f"seed={item_seed(seeds, index)}"]
    if request.batch_size > 1 and not isinstance(request.seed, list):
        parts.append(f"batch_size={request.batch_size} item={index}")  # one generator shared by the batch
    parts += [f"model={model}", f"steps={request.steps}", f"cfg_scale={request.cfg_scale:g}",
              f"sampler={request.sampler_type}"]
    if request.negative_prompt and request.negative_prompt[index]:
        parts.append(f"negative_prompt={request.negative_prompt[index]!r}")
    if request.apg_scale != 1.0:
        parts.append(f"apg_scale={request.apg_scale:g}")
    if request.init_audio is not None:
        parts.append(f"init_audio={_audio_name(request.init_audio)} init_noise_level={request.init_noise_level:g}")
    if request.inpaint_audio is not None:
        parts.append(f"inpaint_audio={_audio_name(request.inpaint_audio)}")
        if request.continuation:
            parts.append("continuation=True")
        if request.inpaint_mask_start_seconds is not None:
            parts.append(f"inpaint_regions={_regions(request)}")
        if request.inpaint_paste_back:
            parts.append("inpaint_paste_back=True")
    for name, strength in loras or []:
        parts.append(f"lora={name}@{strength:g}")
    return " ".join(parts)


def _audio_name(value) -> str:
    return Path(value).name if isinstance(value, (str, Path)) else "<array>"


def _regions(request: GenerationRequest) -> str:
    starts, ends = request.inpaint_mask_start_seconds, request.inpaint_mask_end_seconds
    starts = starts if isinstance(starts, (list, tuple)) else [starts]
    ends = ends if isinstance(ends, (list, tuple)) else [ends]
    return ",".join(f"{s:g}-{e:g}" for s, e in zip(starts, ends, strict=True))


def file_metadata(request: GenerationRequest, seeds: list[int], index: int, model: str,
                  loras: list[tuple[str, float]] | None = None) -> dict[str, str]:
    """Title = the item's prompt; comment = the settings that reproduce it (WAV, FLAC, OGG and MP3 keep both)."""
    from . import __version__

    return {"title": request.prompt[index], "comment": settings_comment(request, seeds, index, model, loras),
            "software": f"stable-audio-3 {__version__}"}


def output_paths(output: str | Path, batch_size: int) -> list[Path]:
    """`name.ext` for one item; `name_0.ext`, `name_1.ext`, ... for a batch."""
    out = Path(output)
    if batch_size == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch_size)]


def codec_options(suffix: str, bit_depth: int | None = None, mp3_bitrate: int | None = None) -> dict:
    """write_audio keyword arguments for a format: the PCM subtype, or the MP3 bitrate."""
    if suffix in BIT_DEPTHS:
        return {"subtype": BIT_DEPTHS[suffix][bit_depth or DEFAULT_BIT_DEPTH[suffix]]}
    if suffix == ".mp3":
        kbps = mp3_bitrate or DEFAULT_MP3_BITRATE
        return {"compression_level": (320 - kbps) / (320 - 32), "bitrate_mode": "CONSTANT"}
    return {}


def save_item(path: Path, audio, sample_rate: int, metadata: dict[str, str], ceiling_db: float | None = None,
              bit_depth: int | None = None, mp3_bitrate: int | None = None,
              clamp: bool = True) -> tuple[Path, float]:
    """Peak-limit one (C, T) item and write it atomically; returns (path, gain applied in dB).
    `clamp=False` writes the samples as they are, peaks above 0 dBFS included (a float WAV keeps them)."""
    from .audio import write_audio

    suffix = Path(path).suffix.lower()
    gain_db = 0.0
    if clamp:
        audio, gain_db = limit_peak(audio, PEAK_CEILING_DB[suffix] if ceiling_db is None else ceiling_db)
    options = codec_options(suffix, bit_depth, mp3_bitrate)
    return write_audio(path, audio, sample_rate, metadata=metadata, clamp=clamp, **options), gain_db


def progress_bar(total_hint: int | None = None, disable: bool = False) -> Callable[[int, int, object], None]:
    """A generate() callback drawing a tqdm bar over the sampling steps (closed at the last step)."""
    from tqdm.auto import tqdm

    bar = None

    def callback(step: int, total: int, x) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total or total_hint, desc="sampling", unit="step", disable=disable, leave=False)
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return callback
