"""The FastAPI application: submit jobs, follow them, fetch or cancel them; models, health, metrics.

`create_app(config, models)` builds it; models are loaded (unless given or already loaded by `serve`) and
workers started in the app's lifespan (state.py), so uvicorn, TestClient and Ray Serve all drive it the same
way. Request checks live in resolve.py, bodies and audio files in uploads.py, who may call in guard.py, the
offline /docs page in docs.py. A client's mistake is a 4xx; the server's own trouble is a 507 (full disk)
or a 503 (database busy), never a bare 500.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .docs import DOCS_HEADERS, docs_page
from .guard import OPEN_PATHS, check_host, check_site, has_key, unauthorized
from .jobs import CANCELLED, COMPLETED, FINISHED, JOB_ID, QUEUED, RUNNING, Job, JobStore, new_job_id
from .longform import add_long_routes, long_status
from .metrics import prometheus_text
from .resolve import batch_key, resolve_request
from .schema import (
    GenerateRequest,
    JobCreated,
    JobInfo,
    ModelInfo,
    RequestError,
    generate_body,
    generate_schema,
    validation_refusal,
)
from .settings import ServerConfig
from .state import ServerState
from .storage import disk_full_message, download_name, is_disk_full
from .uploads import AUDIO_FORMATS, audio_file, parse_generate, save_uploads

log = logging.getLogger("stable_audio_3.server")


class ErrorBody(BaseModel):
    error: dict[str, Any]


class Deleted(BaseModel):
    id: str
    deleted: bool


def prompt_warnings(model: Any, params: dict) -> list[str]:
    """One line per prompt (or negative prompt) with words the model's closed vocabulary does not know."""
    from ..vocabulary import describe_unknown, unknown_words

    if model is None:
        return []
    lines = []
    for field in ("prompt", "negative_prompt"):
        texts = params.get(field) or []
        for text in dict.fromkeys([texts] if isinstance(texts, str) else texts):
            message = describe_unknown(unknown_words(model, text))
            if message:
                lines.append(f"{field} {text!r}: {message}")
    return lines


def job_info(job: Job, store: JobStore, model: Any = None) -> dict:
    if job.status == COMPLETED:
        progress = 1.0
    else:
        progress = job.step / job.total_steps if job.total_steps else 0.0
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
        "request": {**job.params, "inputs": sorted(job.inputs)},
        "warnings": prompt_warnings(model, job.params),
        **long_status(job, store, model),  # a long-form job: its plan, window and audio so far
    }


def read_chunks(f, size: int = 1 << 16):
    """The bytes of an open file, then close it."""
    with f:
        while chunk := f.read(size):
            yield chunk


def server_trouble(exc: BaseException) -> RequestError | None:
    """The server's own trouble as a clear status: a full disk is 507, a database kept busy by another
    process is 503 (retry); None for anything else (a bug: 500)."""
    if is_disk_full(exc):
        return RequestError(507, None, disk_full_message(exc), kind="insufficient_storage")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return RequestError(503, None, f"the job database is busy ({exc}); retry", kind="busy",
                            headers={"Retry-After": "1"})
    return None


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
        docs_url=None,  # FastAPI's pages load their scripts from a CDN; /docs is our own offline page
        redoc_url=None,
        description="Text-to-audio, audio-to-audio and inpainting jobs: POST /v1/generate, then poll "
        "GET /v1/jobs/{id} and fetch GET /v1/jobs/{id}/audio.",
    )
    app.state.server = state
    fastapi_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document, plus the GenerateRequest schema that the generate body refers to (the route reads
        its body itself, JSON or multipart, so FastAPI does not list the model on its own)."""
        spec = fastapi_openapi()
        spec.setdefault("components", {}).setdefault("schemas", {})["GenerateRequest"] = generate_schema()
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    errors = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 507)}

    # -- errors: always JSON naming the field ------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        if exc.status in (413, 429):
            state.metrics.inc("sa3_requests_refused_total", reason=str(exc.status))
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(first.get("loc", ()))
        if loc and loc[0] in ("query", "path", "body", "header"):
            first = {**first, "loc": loc[1:]}
        return JSONResponse(validation_refusal(first).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        body = {"error": {"type": "http_error", "field": None, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def _storage_error(request: Request, exc: Exception):
        """Files and the database: the server's own trouble, answered here (a handler for Exception would
        answer too, but then re-raise into uvicorn, which drops the connection)."""
        trouble = server_trouble(exc)
        if trouble is None:
            return await _internal_error(request, exc)
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(trouble.body(), status_code=trouble.status, headers=trouble.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        body = {"error": {"type": "internal_error", "field": None, "message": "internal server error"}}
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        h = request.headers
        refused = check_host(h.get("host"), config) or check_site(
            request.method, h.get("host"), h.get("origin"), h.get("sec-fetch-site"), h.get("sec-fetch-mode"), config)
        if refused is None and request.url.path not in OPEN_PATHS and not has_key(h.get("authorization"), config):
            refused = unauthorized()
        if refused is not None:
            return JSONResponse(refused.body(), status_code=refused.status, headers=refused.headers)
        return await call_next(request)

    if config.allowed_origins:  # the user's own web apps may call the API and read its answers
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.allowed_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Location", "Retry-After"])

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
        openapi_extra={"requestBody": generate_body()},
        responses=errors,
        summary="Queue a generation job",
    )
    async def generate(request: Request):
        fields, uploads = await parse_generate(request, config)
        try:
            # strict JSON validation: no "5" for 5, no true for 1.0
            req = GenerateRequest.model_validate_json(json.dumps(fields), strict=True)
        except ValidationError as e:
            raise validation_refusal(e.errors()[0]) from None
        name = req.model or next(iter(state.models))
        if name not in state.models:
            raise RequestError(
                422, "model", f"model={name!r} is not served here; available: " + ", ".join(state.models)
            )
        params, seeds = await run_in_threadpool(resolve_request, req, state.limits(name), config.max_batch,
                                                config.max_total_seconds, uploads)
        if state.store.count(QUEUED) >= config.max_queue:  # cheap early refusal; `add` checks again atomically
            raise queue_full()
        job_id = new_job_id()
        inputs = await run_in_threadpool(save_uploads, state.store, job_id, uploads)
        key = batch_key(name, params, has_audio=bool(uploads))
        try:
            job = await run_in_threadpool(state.store.add, job_id, name, params, inputs, seeds, key, config.max_queue)
        except BaseException:  # a full disk: no folder without its job
            await run_in_threadpool(state.store.remove_files, job_id, False)
            raise
        if job is None:
            await run_in_threadpool(state.store.remove_files, job_id, False)
            raise queue_full()
        state.metrics.inc("sa3_jobs_submitted_total", model=name)
        if name in state.workers:
            state.workers[name].wake()
        return JSONResponse(
            {"id": job_id, "status": QUEUED, "url": f"/v1/jobs/{job_id}", "seeds": seeds,
             "warnings": prompt_warnings(state.models[name], params)},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job_id}"},
        )

    @app.get("/v1/jobs/{job_id}", response_model=JobInfo, responses=errors, summary="Job status and details")
    def get_job_info(job_id: str):
        job = get_job(job_id)
        return job_info(job, state.store, state.models.get(job.model))

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
        return job_info(job, state.store, state.models.get(job.model))

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
        gone = RequestError(404, "job_id", f"the audio of job {job_id} was deleted or expired", kind="not_found")
        path = audio_file(state.store, job, index, format)
        if path is None:
            raise gone
        try:  # opened here: a DELETE from now on cannot cut the body short (the open file stays readable)
            f = open(path, "rb")
        except FileNotFoundError:
            raise gone from None
        size = os.fstat(f.fileno()).st_size
        headers = {"Content-Length": str(size),
                   "Content-Disposition": f'attachment; filename="{download_name(job, index, format)}"'}
        return StreamingResponse(read_chunks(f), media_type=AUDIO_FORMATS[format], headers=headers)

    @app.get("/v1/models", response_model=list[ModelInfo], responses=errors, summary="Models served")
    def list_models():
        counts = state.store.counts_by_status()
        out = []
        for name, m in state.models.items():
            d = m.defaults
            out.append({
                "name": name,
                "sample_rate": d.sample_rate,
                "max_duration": round(d.max_duration, 3),
                "default_duration": round(d.duration, 3),
                "max_sample_size": d.max_samples,
                "is_base": d.is_base,
                "default_steps": d.steps,
                "default_cfg_scale": d.cfg_scale,
                "default_sampler": d.sampler,
                "device": str(m.device),
                "queued": counts.get((name, QUEUED), 0),
                "running": counts.get((name, RUNNING), 0),
                "loras": list(state.model_loras.get(name, {})),
            })
        return out

    @app.get("/healthz", summary="Liveness (no API key needed: then only the status)")
    def healthz(request: Request):
        workers = {name: w.alive for name, w in state.workers.items()}
        ok = state.store is not None and all(workers.values())
        if not has_key(request.headers.get("authorization"), config):
            return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)
        body = {
            "status": "ok" if ok else "degraded",
            "models": list(state.models),
            "workers": workers,
            "uptime_s": round(time.time() - state.started, 1),
            "pid": os.getpid(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(docs_page(app.title, __version__), headers=DOCS_HEADERS)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics():
        text = prometheus_text(state.metrics, state.store, list(state.models),
                               {name: w.alive for name, w in state.workers.items()}, state.started)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    add_long_routes(app, state, get_job, queue_full, errors)  # POST /v1/long, GET /v1/jobs/{id}/stream
    return app
