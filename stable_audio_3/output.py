"""From generated audio to files, the same way on the CLI, the web page and the server.

Each item is cut to its own duration, gets one gain so its peak stays under the format's ceiling
(never sample-by-sample clipping), carries metadata that reproduces it, and is written atomically.

Metadata: the title is the item's prompt; the comment is one human-readable line of the main settings,
then a second line holding the record (`file_record`): the complete resolved request
(`GenerationRequest.to_json`: every option, input audio as its digest), the seeds, the model, its LoRAs
with strengths, how it was loaded, the item's index and the package version. `read_record` gets it
back; `stable-audio --from-metadata FILE` regenerates the file from it. The comment is the one field
libsndfile keeps in all four formats (measured with libsndfile 1.2.2; MP3's ID3 tag mangles non-ASCII,
so the record is ASCII JSON). A WAV keeps at most `WAV_FIELD_BYTES` per field: a longer record is
stored zlib-compressed and base64-encoded there (`RECORD_Z`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .request import AUDIO_FIELDS, GenerationRequest, LoadOptions, sha256_of_samples

log = logging.getLogger("stable_audio_3")

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
# The longest string libsndfile 1.2.2 keeps in a WAV INFO field (longer ones are dropped silently).
WAV_FIELD_BYTES = 2045
RECORD_KEY = "stable_audio_3"  # the record's first key: its version of the format
RECORD_VERSION = 1
RECORD_Z = "sa3z:"  # prefix of a compressed record (zlib, then base64)


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
    if isinstance(value, dict):  # a digest (to_json)
        return str(value.get("name"))
    return Path(value).name if isinstance(value, (str, Path)) else "<array>"


def _regions(request: GenerationRequest) -> str:
    starts, ends = request.inpaint_mask_start_seconds, request.inpaint_mask_end_seconds
    starts = starts if isinstance(starts, (list, tuple)) else [starts]
    ends = ends if isinstance(ends, (list, tuple)) else [ends]
    return ",".join(f"{s:g}-{e:g}" for s, e in zip(starts, ends, strict=True))


def audio_digest(value: Any, name: str = "audio") -> dict[str, Any]:
    """What identifies an audio input in a file's metadata: its file name (or "<array>"), rate, shape and
    the sha256 of its decoded samples (float32, channels first, with the rate), so a file and the same
    audio given as an array, or the server's re-encoded upload, have one digest."""
    import os

    from .audio import as_channels_first, read_audio

    if isinstance(value, (str, os.PathLike)):
        samples, rate = read_audio(value, name=f"{name} {value}")
        label = os.path.basename(os.fspath(value))
    else:
        rate, samples = (value[1], value[0]) if hasattr(value[0], "shape") else (value[0], value[1])
        samples, label = as_channels_first(samples, name), "<array>"
    rate = int(rate)
    return {"name": label, "sample_rate": rate, "channels": int(samples.shape[0]), "frames": int(samples.shape[-1]),
            "sha256": sha256_of_samples(samples, rate)}


def audio_digests(audio: GenerationRequest | dict[str, Any]) -> dict[str, dict]:
    """`audio_digest` of each audio input of a request (or of a dict field name -> audio), by field name."""
    if isinstance(audio, GenerationRequest):
        audio = {name: getattr(audio, name) for name in AUDIO_FIELDS}
    return {name: audio_digest(value, name) for name, value in audio.items() if value is not None}


def file_record(request: GenerationRequest, seeds: list[int], index: int, model: str,
                loras: list[tuple[str, float]] | None = None, load: LoadOptions | None = None,
                digests: dict[str, dict] | None = None, model_config: str | None = None) -> dict[str, Any]:
    """What reproduces item `index` of a run: the resolved request with the seeds that were used (a
    random -1 replaced), the model (and `--model-config`), LoRAs and strengths, load options, the item's
    index in the batch and the package version. `digests`: `audio_digests(request)` (read once per run;
    made here when None)."""
    digests = audio_digests(request) if digests is None else digests
    from . import __version__

    used = list(seeds) if isinstance(request.seed, list) else seeds[0]
    return {RECORD_KEY: RECORD_VERSION, "version": __version__, "model": model, "model_config": model_config,
            "item": index, "loras": [{"name": name, "strength": float(s)} for name, s in loras or []],
            "load": None if load is None else {name: getattr(load, name) for name in LoadOptions.__dataclass_fields__},
            "request": request.replace(seed=used).to_json(digests)}


def encode_record(record: dict[str, Any], limit: int | None = None) -> str:
    """The record as one ASCII line; compressed when longer than `limit` bytes (a WAV field)."""
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if limit is not None and len(text) > limit:
        text = RECORD_Z + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return text


def decode_record(comment: str) -> dict[str, Any] | None:
    """The record in a file's comment (plain or compressed), or None when it holds none."""
    for line in reversed((comment or "").splitlines()):
        try:
            if line.startswith(RECORD_Z):
                line = zlib.decompress(base64.b64decode(line[len(RECORD_Z):])).decode()
            if line.startswith("{"):
                record = json.loads(line)
                if isinstance(record, dict) and RECORD_KEY in record:
                    return record
        except (ValueError, zlib.error):
            continue
    return None


def read_record(path: str | Path) -> dict[str, Any]:
    """The record of an audio file this package wrote; ValueError naming the file otherwise."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            comment = f.copy_metadata().get("comment", "")
    except (RuntimeError, OSError, sf.LibsndfileError) as e:
        raise ValueError(f"{path}: not a readable audio file ({e})") from None
    record = decode_record(comment)
    if record is None:
        raise ValueError(f"{path}: its metadata holds no stable-audio-3 request (files written by stable-audio-3 "
                         "0.1.0 or later carry one in their comment)")
    if record.get(RECORD_KEY) != RECORD_VERSION:
        raise ValueError(f"{path}: its request was written in record format {record.get(RECORD_KEY)!r}; this version "
                         f"reads format {RECORD_VERSION}")
    return record


def file_metadata(request: GenerationRequest, seeds: list[int], index: int, model: str,
                  loras: list[tuple[str, float]] | None = None, suffix: str = ".flac",
                  record: dict[str, Any] | None = None) -> dict[str, str]:
    """Title = the item's prompt; comment = the settings as one line, then the record that reproduces
    the item (`file_record`), fitted to the format `suffix` (WAV fields are short: a longer prompt is cut
    in the title; the record keeps it whole)."""
    from . import __version__

    human = settings_comment(request, seeds, index, model, loras)
    comment = human
    if record is not None:
        limit = WAV_FIELD_BYTES if suffix.lower() == ".wav" else None
        line = encode_record(record, None if limit is None else limit - len(human.encode()) - 1)
        comment = f"{human}\n{line}"
        if limit is not None and len(comment.encode()) > limit:
            if len(line) <= limit:
                comment = line  # the record alone: no room for the human line beside it
            else:
                comment = human
                log.warning("the request is too long for a .wav file's metadata (%d bytes compressed, at most %d); "
                            "write .flac, .ogg or .mp3 to keep it", len(line), limit)
    title = request.prompt[index]
    if suffix.lower() == ".wav":  # a longer title would make libsndfile drop it and every field after it
        title = title.encode()[:WAV_FIELD_BYTES].decode(errors="ignore")
    return {"comment": comment, "title": title, "software": f"stable-audio-3 {__version__}"}


def download_name(prompt: str, cfg_scale: float, seed: int, settings: Any, suffix: str,
                  index: int | None = None) -> str:
    """A file name that says what the item is and differs whenever the settings differ:
    `<prompt>.cfg<cfg>.seed<seed>.<8 hex of the settings' sha256>[_<index>]<suffix>`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = f"{condense(prompt)}.cfg{cfg_scale:g}.seed{seed}.{digest}"
    return f"{base}{'' if index is None else f'_{index}'}{suffix}"


def condense(text: str, limit: int = 80) -> str:
    """A prompt as a file-name part: no path separators or shell-hostile characters."""
    return re.sub(r"[^\w.,+-]+", "_", text, flags=re.ASCII).strip("_.")[:limit] or "output"


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
