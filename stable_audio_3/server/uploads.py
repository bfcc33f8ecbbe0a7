"""Audio in and out of the server: request bodies (JSON or multipart with audio files), decoding and storing
uploads, and the formats a finished job's audio is delivered in.

Uploads are decoded here by `audio.read_audio`, bounded by samples x channels (from the header, then while
decoding) so that no upload makes the server hold more than `max_upload_values` in memory or on disk, checked
(size, length, rate, channels, finite samples) and stored as 32-bit float WAVs holding exactly the decoded
samples; a job never reads a file a client named. Deliveries convert the
stored float WAV once per format through the shared output module (output.py): the CLI's codecs (24-bit
FLAC, 320 kbps MP3), peak ceilings (one gain, never clipping) and metadata.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .jobs import Job, JobStore
from .schema import UPLOAD_FIELDS, RequestError
from .settings import ServerConfig
from .storage import encode_audio

MAX_JSON_BYTES = 1024 * 1024
AUDIO_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, None, f"request body of {int(declared)} bytes is too large; at most {limit}",
                           kind="too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, None, f"request body is too large; at most {limit} bytes", kind="too_large")
    return bytes(body)


def decode_upload(role: str, data: bytes, config: ServerConfig, max_values: int):
    """Uploaded bytes -> ((C, T) float32 tensor, sample rate), or a RequestError naming the field. At most
    `max_values` samples x channels are decoded (checked from the header first, then while decoding): what
    is left of the request's `max_upload_values` (413 past it)."""
    import soundfile as sf

    from ..audio import AudioTooLarge, read_audio

    if not data:
        raise RequestError(422, role, f"{role}: the file is empty")
    if len(data) > config.max_upload_bytes:
        raise RequestError(413, role, f"{role}: {len(data)} bytes is too large; at most {config.max_upload_bytes}",
                           kind="too_large")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:
        raise RequestError(422, role, f"{role}: not a readable audio file (wav, flac, ogg or mp3)") from None
    if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > config.max_upload_seconds:
        raise RequestError(422, role, f"{role}: {info.frames / info.samplerate:.1f} s is too long; at most "
                           f"{config.max_upload_seconds:g} s")
    try:
        audio, sr = read_audio(io.BytesIO(data), max_values=max_values, name=role)
    except AudioTooLarge as e:
        raise RequestError(413, role, f"{e} (a request's files may hold {config.max_upload_values} samples x "
                           "channels in all)", kind="too_large") from None
    except ValueError as e:
        raise RequestError(422, role, str(e)) from None
    if audio.shape[1] / sr > config.max_upload_seconds:
        raise RequestError(422, role, f"{role}: too long; at most {config.max_upload_seconds:g} s")
    return audio, sr


async def parse_generate(request: Request, config: ServerConfig) -> tuple[dict, dict[str, tuple]]:
    """JSON body, or multipart with a `request` JSON field and audio files -> (fields, decoded uploads)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await read_body(request, config.max_upload_bytes * len(UPLOAD_FIELDS) + MAX_JSON_BYTES)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=len(UPLOAD_FIELDS), max_fields=4)
        except Exception as e:
            raise RequestError(400, None, f"malformed multipart body: {getattr(e, 'detail', e)}") from None
        fields, uploads = None, {}
        for key, value in form.multi_items():
            if key == "request":
                if not isinstance(value, str) or fields is not None:
                    raise RequestError(422, "request", "'request' must be one text field holding the JSON request")
                fields = parse_json(value.encode(), "request")
            elif key in UPLOAD_FIELDS:
                if not isinstance(value, UploadFile) or key in uploads:
                    raise RequestError(422, key, f"{key} must be one uploaded audio file")
                data = await value.read()
                budget = config.max_upload_values - sum(a.numel() for a, _ in uploads.values())
                uploads[key] = await run_in_threadpool(decode_upload, key, data, config, budget)
            else:
                allowed = ", ".join(("request", *UPLOAD_FIELDS))
                raise RequestError(422, key, f"unknown form field {key!r}; allowed: {allowed}")
        if fields is None:
            raise RequestError(422, "request", "the multipart body needs a 'request' field holding the JSON request")
        return fields, uploads
    if ctype not in ("application/json", ""):
        raise RequestError(415, None, f"content type {ctype!r} is not supported; send application/json, or "
                           "multipart/form-data to upload audio", kind="unsupported_media_type")
    return parse_json(await read_body(request, MAX_JSON_BYTES), "body"), {}


def parse_json(raw: bytes, field: str) -> dict:
    """A JSON object (NaN and Infinity refused), or a 400/422 naming `field`."""
    try:
        value = json.loads(raw, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not allowed")))
    except (ValueError, RecursionError) as e:
        raise RequestError(400, field, f"{field}: invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RequestError(422, field, f"{field}: a JSON object is required")
    return value


def save_uploads(store: JobStore, job_id: str, uploads: dict[str, tuple]) -> dict[str, str]:
    """Decoded uploads -> 32-bit float WAV files (the decoded samples exactly: unclamped, no gain) under names
    we choose, in the job's own folder; returns role -> file name. On failure (a full disk) the folder is
    removed again: no folder without its job."""
    inputs = {}
    try:
        for role, (audio, sr) in uploads.items():
            name = f"input_{role}.wav"
            store.write(job_id, name, encode_audio(audio, sr, ".wav", bit_depth=32, clamp=False), create=True)
            inputs[role] = name
    except BaseException:
        store.remove_files(job_id, keep_outputs=False)
        raise
    return inputs


def audio_file(store: JobStore, job: Job, index: int, fmt: str) -> Path | None:
    """The stored float WAV, or a copy in another format made once and kept next to it (None: deleted).
    The copy is written into the job's folder only while it exists, and is removed again when the job was
    deleted meanwhile: a conversion racing a DELETE leaves nothing behind."""
    import soundfile as sf

    from ..audio import read_audio

    source = store.file_path(job.id, job.outputs[index])
    if fmt == "wav":
        return source if source.is_file() else None
    target = source.with_suffix(f".{fmt}")
    if target.is_file():
        return target
    try:
        audio, sr = read_audio(source)
        with sf.SoundFile(str(source)) as f:
            metadata = {k: v for k, v in f.copy_metadata().items() if k in ("title", "comment", "software")}
    except (OSError, ValueError, RuntimeError):  # deleted (or being deleted) meanwhile?
        if source.is_file():
            raise
        return None
    data = encode_audio(audio, sr, f".{fmt}", metadata)
    try:
        store.write(job.id, target.name, data)
    except FileNotFoundError:
        return None
    if store.get(job.id) is None:  # deleted while we wrote: do not leave a folder behind
        store.remove_files(job.id, keep_outputs=False)
        return None
    return target
