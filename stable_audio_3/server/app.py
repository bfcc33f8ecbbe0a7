"""The FastAPI application: submit jobs, follow them, fetch or cancel them; models, health, metrics.

`create_app(config, models)` builds it; models are loaded (unless given) and workers started in the
app's lifespan, so uvicorn, TestClient and Ray Serve all drive it the same way.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .config import ServerConfig, check_lora_files, model_specs
from .jobs import (
    CANCELLED,
    COMPLETED,
    FINISHED,
    JOB_ID,
    QUEUED,
    RUNNING,
    Job,
    JobStore,
    new_job_id,
    write_float_wav,
)
from .schema import (
    AUDIO_ROLES,
    GenerateRequest,
    JobCreated,
    JobInfo,
    ModelInfo,
    ModelLimits,
    RequestError,
    batch_key,
    field_name,
    resolve_request,
)
from .worker import Metrics, Worker

log = logging.getLogger("stable_audio_3.server")

MAX_JSON_BYTES = 1024 * 1024
AUDIO_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
FORMAT_SUBTYPES = {"wav": "FLOAT", "flac": "PCM_24", "mp3": None, "ogg": "VORBIS"}
MIN_UPLOAD_RATE, MAX_UPLOAD_RATE = 1000, 768000


class ErrorBody(BaseModel):
    error: dict[str, Any]


class Deleted(BaseModel):
    id: str
    deleted: bool


class ServerState:
    """What the endpoints share: settings, the job store, the loaded models and their workers."""

    def __init__(self, config: ServerConfig, models: dict[str, Any] | None):
        self.config = config
        self.models: dict[str, Any] = dict(models or {})
        self.workers: dict[str, Worker] = {}
        self.metrics = Metrics()
        self.store: JobStore | None = None
        self.started = time.time()
        self.model_loras: dict[str, list[str]] = {}  # model name -> the configured LoRA names that fit it

    def start(self) -> None:
        if not self.models:
            from .. import StableAudioModel

            for name, source in model_specs(self.config.models).items():
                log.info("loading model %s from %s", name, source)
                self.models[name] = StableAudioModel.from_pretrained(source, device=self.config.device)
        self.check_loras()
        self.store = JobStore(self.config.data_dir)
        if self.config.run_workers and self.config.recover_all_running:
            requeued = self.store.requeue_running()
            if requeued:
                log.info("requeued %d jobs interrupted by the last shutdown", requeued)
        self.store.expire(self.config.expiry_s)
        if self.config.run_workers:
            for name, model in self.models.items():
                self.workers[name] = Worker(name, model, self.store, self.config, self.metrics)
                self.workers[name].start()
        log.info("serving models %s from %s", ", ".join(self.models), self.config.data_dir)

    def check_loras(self) -> None:
        """Load each configured LoRA onto each model once (then unload it): a LoRA is offered for the models it
        fits; one that is missing, unreadable or fits none of them stops the server with the reason."""
        from ..models.lora import LoraError

        check_lora_files(self.config.loras)
        self.model_loras = {name: [] for name in self.models}
        for lora, path in self.config.loras.items():
            problems = []
            for name, model in self.models.items():
                model.unload_lora()
                try:
                    model.load_lora([path])
                except LoraError as e:
                    problems.append(f"model {name!r}: {e}")
                    log.warning("LoRA %s (%s) does not fit model %s; not offered for it: %s", lora, path, name, e)
                else:
                    self.model_loras[name].append(lora)
                finally:
                    model.unload_lora()
            if len(problems) == len(self.models):
                raise ValueError(f"--lora {lora}={path} cannot be used with any model served:\n" + "\n".join(problems))
        if self.config.loras:
            log.info("LoRAs offered: %s", {m: names for m, names in self.model_loras.items()})

    def limits(self, name: str) -> ModelLimits:
        return ModelLimits.of(name, self.models[name], self.model_loras.get(name, ()))

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()
        if self.store is not None:
            self.store.close()

    def retry_after(self) -> int:
        """A guess at when a queue slot frees up, from the average batch time so far."""
        snap = self.metrics.snapshot()
        batches = sum(v for (k, _), v in snap.items() if k == "sa3_batches_total")
        seconds = sum(v for (k, _), v in snap.items() if k == "sa3_generate_seconds_total")
        per_batch = seconds / batches if batches else 5.0
        return max(1, math.ceil(per_batch))


def job_info(job: Job, store: JobStore) -> dict:
    if job.total_steps:
        progress = job.step / job.total_steps
    else:
        progress = 1.0 if job.status == COMPLETED else 0.0
    if job.status == COMPLETED:
        progress = 1.0
    return {
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created,
        "started_at": job.started,
        "finished_at": job.finished,
        "queue_position": store.queue_position(job) if job.status == QUEUED else None,
        "progress": round(progress, 4),
        "step": job.step,
        "total_steps": job.total_steps,
        "seeds": job.seeds,
        "durations": job.params["duration"],
        "num_outputs": job.num_items,
        "batch": {"id": job.batch_id, "jobs": job.batch_jobs, "items": job.batch_items},
        "attempts": job.attempts,
        "worker": job.owner,
        "timings": job.timings,
        "error": job.error,
        "audio_urls": [f"/v1/jobs/{job.id}/audio?index={i}" for i in range(len(job.outputs))],
        "request": {k: v for k, v in job.params.items()} | {"inputs": sorted(job.inputs)},
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, None, f"request body of {int(declared)} bytes is too large; at most {limit}", kind="too_large"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, None, f"request body is too large; at most {limit} bytes", kind="too_large")
    return bytes(body)


def decode_upload(role: str, data: bytes, config: ServerConfig):
    """Uploaded bytes -> ((C, T) float32 tensor, sample rate), or a RequestError naming the field."""
    import numpy as np
    import soundfile as sf
    import torch

    if not data:
        raise RequestError(422, role, f"{role}: the file is empty")
    if len(data) > config.max_upload_bytes:
        raise RequestError(
            413, role, f"{role}: {len(data)} bytes is too large; at most {config.max_upload_bytes}", kind="too_large"
        )
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:
        raise RequestError(422, role, f"{role}: not a readable audio file (wav, flac, ogg or mp3)") from None
    if not MIN_UPLOAD_RATE <= info.samplerate <= MAX_UPLOAD_RATE:
        raise RequestError(
            422,
            role,
            f"{role}: sample rate {info.samplerate} Hz is not supported; {MIN_UPLOAD_RATE}..{MAX_UPLOAD_RATE} Hz",
        )
    if not 1 <= info.channels <= 8:
        raise RequestError(422, role, f"{role}: {info.channels} channels; 1 to 8 are supported")
    if info.frames > 0 and info.frames / info.samplerate > config.max_upload_seconds:
        raise RequestError(
            422,
            role,
            f"{role}: {info.frames / info.samplerate:.1f} s is too long; at most {config.max_upload_seconds:g} s",
        )
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:
        raise RequestError(422, role, f"{role}: the audio could not be decoded") from None
    if audio.shape[0] == 0:
        raise RequestError(422, role, f"{role}: the file holds no samples")
    if audio.shape[0] / sr > config.max_upload_seconds:
        raise RequestError(422, role, f"{role}: too long; at most {config.max_upload_seconds:g} s")
    if not np.isfinite(audio).all():
        raise RequestError(422, role, f"{role}: the audio holds NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(audio.T)), int(sr)


async def parse_generate(request: Request, config: ServerConfig) -> tuple[dict, dict[str, tuple]]:
    """JSON body, or multipart with a `request` JSON field and audio files -> (fields, decoded uploads)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        limit = config.max_upload_bytes * len(AUDIO_ROLES) + MAX_JSON_BYTES
        body = await read_body(request, limit)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=len(AUDIO_ROLES), max_fields=4)
        except Exception as e:
            raise RequestError(400, None, f"malformed multipart body: {getattr(e, 'detail', e)}") from None
        fields, uploads = None, {}
        for key, value in form.multi_items():
            if key == "request":
                if not isinstance(value, str) or fields is not None:
                    raise RequestError(422, "request", "'request' must be one text field holding the JSON request")
                fields = _json(value.encode(), "request")
            elif key in AUDIO_ROLES:
                if not isinstance(value, UploadFile) or key in uploads:
                    raise RequestError(422, key, f"{key} must be one uploaded audio file")
                data = await value.read()
                uploads[key] = await run_in_threadpool(decode_upload, key, data, config)
            else:
                raise RequestError(422, key, f"unknown form field {key!r}; allowed: request, " + ", ".join(AUDIO_ROLES))
        if fields is None:
            raise RequestError(422, "request", "the multipart body needs a 'request' field holding the JSON request")
        return fields, uploads
    if ctype not in ("application/json", ""):
        raise RequestError(
            415,
            None,
            f"content type {ctype!r} is not supported; send application/json, or multipart/form-data to upload audio",
            kind="unsupported_media_type",
        )
    return _json(await read_body(request, MAX_JSON_BYTES), "body"), {}


def _json(raw: bytes, field: str) -> dict:
    try:
        value = json.loads(raw, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not allowed")))
    except (ValueError, RecursionError) as e:
        raise RequestError(400, field, f"{field}: invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RequestError(422, field, f"{field}: a JSON object is required")
    return value


def inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` put in place: embedded in the OpenAPI document, a
    '#/$defs/...' reference would point at nothing."""
    defs = schema.get("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


GENERATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": inline_refs(GenerateRequest.model_json_schema())},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["request"],
                "properties": {
                    "request": {"type": "string", "description": "the JSON request (GenerateRequest) as text"},
                    "init_audio": {"type": "string", "format": "binary", "description": "audio-to-audio source"},
                    "inpaint_audio": {
                        "type": "string",
                        "format": "binary",
                        "description": "audio to inpaint or continue",
                    },
                },
            }
        },
    },
}


def create_app(config: ServerConfig | None = None, models: dict[str, Any] | None = None) -> FastAPI:
    """The HTTP API. `models` ({name: StableAudioModel}) skips loading `config.models`."""
    config = config or ServerConfig()
    state = ServerState(config, models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.start)
        try:
            yield
        finally:
            await run_in_threadpool(state.stop)

    app = FastAPI(
        title="Stable Audio 3",
        version=__version__,
        lifespan=lifespan,
        description="Text-to-audio, audio-to-audio and inpainting jobs: POST /v1/generate, then poll "
        "GET /v1/jobs/{id} and fetch GET /v1/jobs/{id}/audio.",
    )
    app.state.server = state
    errors = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429)}

    # -- errors: always JSON naming the field ------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        if exc.status in (413, 429):
            state.metrics.inc("sa3_requests_refused_total", reason=str(exc.status))
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = tuple(first.get("loc", ()))
        loc = loc[1:] if loc and loc[0] in ("query", "path", "body", "header") else loc
        field = field_name(loc)
        return JSONResponse(RequestError(422, field, f"{field}: {first.get('msg')}").body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        body = {"error": {"type": "http_error", "field": None, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        body = {"error": {"type": "internal_error", "field": None, "message": "internal server error"}}
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if config.api_key and request.url.path != "/healthz":
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                body = {
                    "error": {
                        "type": "unauthorized",
                        "field": "Authorization",
                        "message": "a valid 'Authorization: Bearer <api key>' header is required",
                    }
                }
                return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def get_job(job_id: str) -> Job:
        job = state.store.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise RequestError(404, "job_id", f"no job {job_id!r} (unknown, deleted or expired)", kind="not_found")
        return job

    def queue_full() -> RequestError:
        message = f"the queue is full ({config.max_queue} jobs); retry later"
        return RequestError(429, None, message, kind="queue_full", headers={"Retry-After": str(state.retry_after())})

    # -- endpoints ----------------------------------------------------------------------------------
    @app.post(
        "/v1/generate",
        status_code=202,
        response_model=JobCreated,
        openapi_extra={"requestBody": GENERATE_BODY},
        responses=errors,
        summary="Queue a generation job",
    )
    async def generate(request: Request):
        fields, uploads = await parse_generate(request, config)
        try:
            # strict JSON validation: no "5" for 5, no true for 1.0
            req = GenerateRequest.model_validate_json(json.dumps(fields), strict=True)
        except ValidationError as e:
            first = e.errors()[0]
            field = field_name(tuple(first["loc"]))
            raise RequestError(422, field, f"{field}: {first['msg']}") from None
        name = req.model or next(iter(state.models))
        if name not in state.models:
            raise RequestError(
                422, "model", f"model={name!r} is not served here; available: " + ", ".join(state.models)
            )
        durations = {role: audio.shape[-1] / sr for role, (audio, sr) in uploads.items()}
        params, seeds = resolve_request(req, state.limits(name), config.max_batch, config.max_total_seconds, durations)
        if state.store.count(QUEUED) >= config.max_queue:  # cheap early refusal; `add` checks again atomically
            raise queue_full()
        job_id = new_job_id()
        inputs = await run_in_threadpool(_save_uploads, state.store, job_id, uploads)
        key = batch_key(name, params, has_audio=bool(uploads))
        job = await run_in_threadpool(state.store.add, job_id, name, params, inputs, seeds, key, config.max_queue)
        if job is None:
            await run_in_threadpool(state.store.remove_files, job_id, False)
            raise queue_full()
        state.metrics.inc("sa3_jobs_submitted_total", model=name)
        if name in state.workers:
            state.workers[name].wake()
        return JSONResponse(
            {"id": job_id, "status": QUEUED, "url": f"/v1/jobs/{job_id}", "seeds": seeds},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    @app.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=errors, summary="Job status and details")
    def get_job_info(job_id: str):
        return job_info(get_job(job_id), state.store)

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobInfo | Deleted,
        responses=errors,
        summary="Cancel a queued or running job; delete a finished one and its audio",
    )
    def delete_job(job_id: str):
        job = get_job(job_id)
        if job.status in FINISHED:
            if not state.store.delete(job_id):
                raise RequestError(404, "job_id", f"no job {job_id!r}", kind="not_found")
            return {"id": job_id, "deleted": True}
        job = state.store.cancel(job_id)
        if job is None:
            raise RequestError(404, "job_id", f"no job {job_id!r}", kind="not_found")
        if job.status == CANCELLED:
            state.metrics.inc("sa3_jobs_finished_total", model=job.model, status=CANCELLED)
        return job_info(job, state.store)

    @app.get(
        "/v1/jobs/{job_id}/audio",
        responses={200: {"content": {m: {} for m in AUDIO_FORMATS.values()}}, **errors},
        response_class=FileResponse,
        summary="Fetch audio",
    )
    def get_audio(
        job_id: str,
        index: int = Query(0, ge=0, description="which output (0-based)"),
        format: Literal["wav", "flac", "mp3", "ogg"] = Query("wav", description="audio file format"),
    ):
        job = get_job(job_id)
        if job.status != COMPLETED:
            raise RequestError(
                409, None, f"job {job_id} is {job.status}; audio exists only for completed jobs", kind="not_ready"
            )
        if index >= len(job.outputs):
            raise RequestError(
                422,
                "index",
                f"index={index} is out of range; this job has {len(job.outputs)} outputs",
                kind="invalid_request",
            )
        path = _audio_file(state.store, job, index, format)
        if path is None:
            raise RequestError(404, "job_id", f"the audio of job {job_id} was deleted or expired", kind="not_found")
        return FileResponse(path, media_type=AUDIO_FORMATS[format], filename=f"{job_id}_{index}.{format}")

    @app.get("/v1/models", response_model=list[ModelInfo], responses=errors, summary="Models served")
    def list_models():
        counts = state.store.counts_by_status()
        return [
            {
                "name": name,
                "sample_rate": m.sample_rate,
                "max_duration": round(m.max_duration, 3),
                "default_duration": round(m.default_duration, 3),
                "max_sample_size": int(m.components.max_samples),
                "is_base": m.is_base,
                "default_steps": m.recommended_steps,
                "default_cfg_scale": m.recommended_cfg_scale,
                "device": str(m.device),
                "queued": counts.get((name, QUEUED), 0),
                "running": counts.get((name, RUNNING), 0),
                "loras": list(state.model_loras.get(name, [])),
            }
            for name, m in state.models.items()
        ]

    @app.get("/healthz", summary="Liveness (no API key needed)")
    def healthz():
        workers = {name: w.alive for name, w in state.workers.items()}
        ok = state.store is not None and all(workers.values())
        body = {
            "status": "ok" if ok else "degraded",
            "models": list(state.models),
            "workers": workers,
            "uptime_s": round(time.time() - state.started, 1),
            "pid": os.getpid(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics():
        return PlainTextResponse(_prometheus(state), media_type="text/plain; version=0.0.4")

    return app


def _save_uploads(store: JobStore, job_id: str, uploads: dict[str, tuple]) -> dict[str, str]:
    """Decoded uploads -> float WAV files (the decoded samples exactly) under names we choose, in the job's
    own folder."""
    inputs = {}
    for role, (audio, sr) in uploads.items():
        name = f"input_{role}.wav"
        write_float_wav(store.file_path(job_id, name), audio, sr)
        inputs[role] = name
    return inputs


def _audio_file(store: JobStore, job: Job, index: int, fmt: str):
    """The stored float WAV, or a converted copy made once and kept next to it."""
    from ..audio import read_audio, write_audio

    source = store.file_path(job.id, job.outputs[index])
    if fmt == "wav":
        return source if source.is_file() else None
    target = source.with_suffix(f".{fmt}")
    if not target.is_file():
        try:
            audio, sr = read_audio(source)
        except FileNotFoundError:
            return None
        write_audio(target, audio, sr, subtype=FORMAT_SUBTYPES[fmt])
    return target


def _prometheus(state: ServerState) -> str:
    lines = []

    def emit(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    counts = state.store.counts_by_status()
    emit(
        "sa3_jobs",
        "gauge",
        "Jobs in the store by model and status.",
        [
            ({"model": m, "status": s}, counts.get((m, s), 0))
            for m in state.models
            for s in (QUEUED, RUNNING, COMPLETED, "failed", CANCELLED)
        ],
    )
    emit(
        "sa3_worker_up",
        "gauge",
        "1 when the model's worker thread is alive.",
        [({"model": name}, float(w.alive)) for name, w in state.workers.items()],
    )
    helps = {
        "sa3_jobs_submitted_total": "Jobs accepted.",
        "sa3_jobs_finished_total": "Jobs finished, by status.",
        "sa3_requests_refused_total": "Requests refused for load (429) or size (413).",
        "sa3_batches_total": "generate() calls run.",
        "sa3_batch_items_total": "Items generated (sum of batch sizes).",
        "sa3_generate_seconds_total": "Seconds spent in generate().",
        "sa3_audio_seconds_total": "Seconds of audio delivered.",
    }
    snap = state.metrics.snapshot()
    for name, help_text in helps.items():
        emit(name, "counter", help_text, [(dict(labels), v) for (n, labels), v in sorted(snap.items()) if n == name])
    emit("sa3_uptime_seconds", "gauge", "Seconds since the server started.", [({}, time.time() - state.started)])
    return "\n".join(lines) + "\n"
