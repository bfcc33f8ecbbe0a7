"""Long-form jobs on the server: `POST /v1/long` queues a piece longer than the model's maximum (see
`stable_audio_3.longform`), `GET /v1/jobs/{id}/stream` sends its audio while it is being made.

A long-form job is an ordinary job of the store (status, cancel, delete, audio, expiry all as usual) whose
params say `"kind": "long_form"`; it never shares a batch and runs on its model's worker thread, so the
model still serves one generation at a time. The body is the request type's JSON fields (one prompt, one
int seed), `duration` as the total length and the long-form fields (`schedule`, `window_seconds`, ...);
the checks are the type's (`LongFormRequest.verify`, the plan against the model) plus the server's own
(total seconds per request, LoRA names), all before the job is queued. A -1 seed is drawn then.

While the job runs, the worker appends each finished stretch to `stream.pcm` in the job's folder (32-bit
float, interleaved, no header), so readers in any process sharing the data folder can follow it; the
stored output is written from the same stretches at the end, so it holds exactly the streamed samples.
A stream is a WAV whose lengths say "unknown" (as `stable-audio long -o -` writes), sent with chunked
transfer: it waits while the job is queued, follows the file while it runs and ends when the job does
(a failed, cancelled or restarted job ends it early: the job's status says which).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError, create_model

from ..audio import pcm_bytes, wav_header
from ..longform import (
    DEFAULT_CROSSFADE,
    DEFAULT_MAX_DURATION,
    LONG_FIELDS,
    NOT_FOR_LONG_FORM,
    LongFormRequest,
    LongGeneration,
    LongPlan,
    check_lengths,
    model_plan,
    stream_plan,
)
from ..request import FIELDS, GenerationRequest, OptionError
from .jobs import COMPLETED, FINISHED, QUEUED, RUNNING, SHARED_GENERATOR, STREAM_FILE, Job, JobStore, new_job_id
from .resolve import _check_server_options, check_dist_shift
from .schema import (
    JSON_FIELDS,
    MAX_LORAS,
    LoraRequest,
    RequestError,
    _annotation,
    _field_info,
    _GenerateBase,
    field_bounds,
    json_words,
    validation_refusal,
)
from .uploads import MAX_JSON_BYTES, parse_json, read_body

KIND = "long_form"
OUTPUT = "output_0.wav"
STREAM_BIT_DEPTHS = (16, 24, 32)
POLL_S = 0.05  # how often a stream looks for new audio or a new status
# Request fields a long-form piece sets itself (its duration, its one item) or does not take.
NOT_LONG = {"duration", "batch_size", "init_noise_level", *NOT_FOR_LONG_FORM}
REQUEST_FIELDS = tuple(name for name in JSON_FIELDS if name not in NOT_LONG)
SINGLE = ("prompt", "negative_prompt", "seed")  # one value, not a list per item
LONG_NAMES = ("duration", "schedule", "window_seconds", "overlap_seconds", "margin_seconds", "crossfade_seconds")


def _single(name: str) -> tuple[Any, Any]:
    """A per-item field of the request type as one value (a long-form piece is one item)."""
    f = FIELDS[name]
    if f.metadata["kind"] == "text":
        return str | None, _field_info(name, f)
    return int, _field_info(name, f)


def _long_field(name: str) -> tuple[Any, Any]:
    f = LONG_FIELDS[name]
    meta = f.metadata
    bounds = field_bounds(meta)
    extra = (lambda schema: schema.update(bounds)) if bounds else None
    if name == "schedule":
        return (list[tuple[float, str]] | None,
                Field(None, description=json_words(meta["help"]) + " (JSON: [[start_seconds, prompt], ...])"))
    if name == "duration":
        return float, Field(..., description=meta["help"] + " (at most the server's max_total_seconds)",
                            json_schema_extra=extra)
    default = DEFAULT_CROSSFADE if name == "crossfade_seconds" else None
    return (float if default is not None else float | None), Field(default, description=json_words(meta["help"]),
                                                                   json_schema_extra=extra)


def _duration_required(schema: dict) -> None:
    """The total duration is required; a prompt or a schedule is (neither alone, so the type says which)."""
    schema["required"] = ["duration"]


class _LongBase(_GenerateBase):
    """The request type's JSON fields for one item, the total duration and the long-form fields."""

    model_config = {**_GenerateBase.model_config, "json_schema_extra": _duration_required}


LongRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "LongRequest",
    __base__=_LongBase,
    __module__=__name__,
    model=(str | None, Field(None, description="a name from GET /v1/models (default: the first one)")),
    **{name: _single(name) if name in SINGLE else (_annotation(name, FIELDS[name]), _field_info(name, FIELDS[name]))
       for name in REQUEST_FIELDS},
    **{name: _long_field(name) for name in LONG_NAMES},
    loras=(list[LoraRequest] | None, Field(None, max_length=MAX_LORAS, description="LoRAs to stack, in order, by "
                                           "the names the server was started with (GET /v1/models)")),
)


class LongCreated(BaseModel):
    id: str
    status: str
    url: str
    stream_url: str = Field(..., description="GET it for the audio while the job runs (WAV, chunked)")
    seeds: list[int] = Field(..., description="the piece's seed (window i uses seed + i)")
    warnings: list[str] = []
    long_form: dict = Field(..., description="the plan: window sizes and each window's seed, prompt and span")


def is_long(params: dict) -> bool:
    return params.get("kind") == KIND


def long_refusal(err: OptionError) -> RequestError:
    """The type's refusal as a 422 naming the JSON field (a detail that names the field already is kept whole)."""
    detail = err.detail
    message = detail if detail is not None and detail.startswith(err.field) else err.spelled(err.field)
    return RequestError(422, err.field, message)


# -- from a request to a job, and back ---------------------------------------------------------------


def long_form_request(params: dict, noise_device: str | None = None) -> LongFormRequest:
    """The `LongFormRequest` of stored params (a -1 seed was drawn when the job was queued)."""
    values = {name: params[name] for name in REQUEST_FIELDS if name in params}
    if values.get("cfg_interval") is not None:
        values["cfg_interval"] = tuple(values["cfg_interval"])
    schedule = params.get("schedule")
    return LongFormRequest(
        GenerationRequest(**values, noise_device=noise_device), params["duration"],
        None if schedule is None else tuple((float(t), p) for t, p in schedule),
        params.get("window_seconds"), params.get("overlap_seconds"), params.get("margin_seconds"),
        params.get("crossfade_seconds", DEFAULT_CROSSFADE), max(DEFAULT_MAX_DURATION, float(params["duration"])))


def resolve_long(req: BaseModel, model, limits, max_seconds: float) -> tuple[dict, LongPlan]:
    """Check a `LongRequest` against the type, the model and the server's limits; returns (the job's stored
    params, its plan). Every refusal is a 422 naming the field."""
    values = {name: getattr(req, name) for name in REQUEST_FIELDS}
    if values["lora_configs"] is not None:
        values["lora_configs"] = [c.model_dump() for c in values["lora_configs"]]
    duration = req.duration
    if math.isfinite(duration) and duration > max_seconds + 1e-9:
        raise RequestError(422, "duration", f"duration={duration:g} is too long; this server allows at most "
                           f"{max_seconds:g} s per request")
    schedule = None if req.schedule is None else tuple((float(t), p) for t, p in req.schedule)
    request = GenerationRequest(**values)
    long = LongFormRequest(request, duration, schedule, req.window_seconds, req.overlap_seconds,
                           req.margin_seconds, req.crossfade_seconds, max(max_seconds, duration))
    try:
        long.verify()
    except OptionError as e:
        raise long_refusal(e) from None
    loras = _check_server_options(req, request, limits)
    check_dist_shift(request.dist_shift, -(-limits.defaults.max_samples // limits.latent_samples))
    try:
        check_lengths(long, limits.defaults.max_duration)
        plan = model_plan(model, long)  # the window against the model; a -1 seed is drawn here
    except OptionError as e:
        raise long_refusal(e) from None
    base = plan.base
    params: dict[str, Any] = {"kind": KIND}
    params.update({name: getattr(base, name) for name in REQUEST_FIELDS if name not in SINGLE})
    params.update(prompt=request.prompt, negative_prompt=request.negative_prompt, seed=plan.windows[0].seed,
                  loras=loras)
    params.update({name: getattr(long, name) for name in LONG_NAMES})
    return json.loads(json.dumps(params)), plan


def job_plan(params: dict, model) -> LongPlan | None:
    """A stored job's plan for `model` (None when the model is not loaded here or no longer fits it)."""
    if model is None:
        return None
    try:
        return model_plan(model, long_form_request(params))
    except (OptionError, ValueError, KeyError):
        return None


def plan_info(plan: LongPlan) -> dict:
    """The plan as JSON: the sizes it settled on and each window's seed, prompt and span."""
    frame_s = plan.ratio / plan.sample_rate
    return {
        "window_seconds": round(plan.window * frame_s, 6),
        "overlap_seconds": round(plan.overlap * frame_s, 6),
        "margin_seconds": round(plan.margin * frame_s, 6),
        "crossfade_seconds": round(plan.crossfade / plan.sample_rate, 6),
        "steps_per_window": plan.base.steps,
        "window_count": len(plan.windows),
        "seeds": [w.seed for w in plan.windows],
        "windows": [w.info() for w in plan.windows],
    }


def long_status(job: Job, store: JobStore | None, model) -> dict:
    """What `job_info` adds for a long-form job (nothing for others): `durations` (the total), warnings for
    every prompt of the schedule, and `long_form`: the plan, the window being sampled and the seconds of
    audio final so far."""
    p = job.params
    if not is_long(p):
        return {}
    block: dict[str, Any] = {"duration": p["duration"], "schedule": p.get("schedule"),
                             "stream_url": f"/v1/jobs/{job.id}/stream", "current_window": None}
    plan = job_plan(p, model)
    ready = 0.0
    if plan is not None:
        block.update(plan_info(plan))
        steps = max(1, plan.base.steps)
        if job.status == RUNNING:
            block["current_window"] = min(max(job.step - 1, 0) // steps, len(plan.windows) - 1)
            if store is not None:
                try:
                    size = store.file_path(job.id, STREAM_FILE).stat().st_size
                except OSError:
                    size = 0
                ready = size // (4 * model.autoencoder.audio_channels) / plan.sample_rate
    if job.status == COMPLETED:
        ready = float(p["duration"])
    block["ready_seconds"] = round(ready, 4)
    return {"durations": [p["duration"]], "warnings": schedule_warnings(model, p), KIND: block}


def schedule_warnings(model, params: dict) -> list[str]:
    """One line per prompt (the schedule's included) with words the model's closed vocabulary does not know."""
    from ..vocabulary import describe_unknown, unknown_words

    if model is None:
        return []
    texts = [("prompt", params.get("prompt")), ("negative_prompt", params.get("negative_prompt"))]
    texts += [(f"schedule[{i}]", entry[1]) for i, entry in enumerate(params.get("schedule") or [])]
    lines = []
    for where, text in texts:
        message = describe_unknown(unknown_words(model, text)) if text else ""
        if message:
            lines.append(f"{where} {text!r}: {message}")
    return lines


# -- the worker's side ---------------------------------------------------------------------------------


def run_long(worker: Any, job: Job, on_step) -> LongGeneration:
    """Make a long-form job's piece on the worker's thread, appending each finished stretch to the job's
    stream file as it comes. `on_step(step, total, x)` gets the steps of the whole piece (window i's step s is
    i * steps + s), so the job's progress and its cancel and timeout cover every window."""
    import torch


    model = worker.model
    plan = model_plan(model, long_form_request(job.params, worker.config.noise_device))
    count = len(plan.windows)
    at = {"index": 0}

    def on_window(w, n: int) -> None:
        at["index"] = w.index

    def callback(step: int, total: int, x):
        return on_step(at["index"] * total + step, total * count, x)

    audio = None
    path = worker.store.file_path(job.id, STREAM_FILE)
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)  # a new file for each run: a reader of an earlier run sees that one end
    with SHARED_GENERATOR, open(path, "xb") as f:
        for stretch in stream_plan(model, plan, callback, on_window):
            piece = stretch.audio.cpu()
            if audio is None:
                audio = torch.empty(piece.shape[0], plan.total, dtype=torch.float32)
            audio[:, stretch.start : stretch.start + piece.shape[-1]] = piece
            f.write(pcm_bytes(piece, 32))
            f.flush()
    return LongGeneration(audio, plan.windows, plan, plan.sample_rate)


def write_long(worker: Any, job: Job, result: LongGeneration) -> list[str]:
    """The piece as the job's one output: a 32-bit float WAV holding exactly the streamed samples."""
    from ..longform import piece_metadata
    from .storage import encode_audio

    loras = [(x["name"], float(x["strength"])) for x in job.params.get("loras") or []]
    metadata = piece_metadata(result.plan, worker.name, loras)
    data = encode_audio(result.audio, result.sample_rate, ".wav", metadata, bit_depth=32, clamp=False)
    worker.store.write(job.id, OUTPUT, data, create=True)
    worker.metrics.inc("sa3_audio_seconds_total", result.audio.shape[-1] / result.sample_rate, model=worker.name)
    return [OUTPUT]


# -- the stream ------------------------------------------------------------------------------------------


def _frames(data: bytes, channels: int, bit_depth: int) -> bytes:
    """Interleaved float32 bytes (whole frames) in the stream's sample format."""
    if bit_depth == 32:
        return data
    import numpy as np
    import torch

    x = np.frombuffer(data, dtype="<f4").reshape(-1, channels)
    return pcm_bytes(torch.from_numpy(x.copy()).T, bit_depth)


def stream_chunks(store: JobStore, job_id: str, sample_rate: int, channels: int, bit_depth: int,
                  poll_s: float = POLL_S) -> Iterator[bytes]:
    """The WAV stream of a long-form job: the header at once, then the audio as it becomes final."""
    import soundfile as sf

    yield wav_header(sample_rate, channels, bit_depth)
    frame = 4 * channels
    f = None
    attempt = None
    rest = b""
    try:
        while True:
            job = store.get(job_id)
            if job is None:  # deleted or expired meanwhile
                return
            if f is None and job.status == RUNNING:
                try:
                    f = open(store.file_path(job_id, STREAM_FILE), "rb")
                    attempt = job.attempts
                except FileNotFoundError:
                    pass  # not started writing yet, or just finished: look again
            if f is not None:
                if job.attempts != attempt:  # a restarted run: this one's audio ends here
                    return
                data = rest + f.read()
                whole = len(data) // frame * frame
                rest = data[whole:]
                if whole:
                    yield _frames(data[:whole], channels, bit_depth)
                if job.status in FINISHED:  # the worker closed the file before recording the end: all read
                    return
                if not whole:
                    time.sleep(poll_s)
                continue
            if job.status == COMPLETED:  # finished before this stream began: the stored audio
                path = store.file_path(job_id, job.outputs[0]) if job.outputs else None
                if path is None or not path.is_file():
                    return
                for block in sf.blocks(str(path), blocksize=sample_rate, dtype="float32", always_2d=True):
                    yield _frames(block.astype("<f4").tobytes(), channels, bit_depth)
                return
            if job.status in FINISHED:
                return
            time.sleep(poll_s)
    finally:
        if f is not None:
            f.close()


# -- the routes ------------------------------------------------------------------------------------------


def add_long_routes(app: FastAPI, state, get_job, queue_full, errors: dict) -> None:
    """POST /v1/long and GET /v1/jobs/{job_id}/stream on the server's app (`state`: its ServerState;
    `get_job` and `queue_full`: the app's own 404 and 429)."""
    config = state.config
    body_schema = {"required": True, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/LongRequest"}}}}
    openapi = app.openapi

    def with_long_schema() -> dict:
        spec = openapi()
        from .schema import inline_refs

        spec.setdefault("components", {}).setdefault("schemas", {})["LongRequest"] = inline_refs(
            LongRequest.model_json_schema())
        return spec

    app.openapi = with_long_schema  # type: ignore[method-assign]

    @app.post("/v1/long", status_code=202, response_model=LongCreated, openapi_extra={"requestBody": body_schema},
              responses=errors, summary="Queue a long-form job: a piece longer than the model's maximum, "
              "window by window, with a prompt schedule")
    async def submit_long(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise RequestError(415, None, f"content type {ctype!r} is not supported; send application/json",
                               kind="unsupported_media_type")
        fields = parse_json(await read_body(request, MAX_JSON_BYTES), "body")
        try:
            req = LongRequest.model_validate_json(json.dumps(fields), strict=True)
        except ValidationError as e:
            raise validation_refusal(e.errors()[0]) from None
        name = req.model or next(iter(state.models))
        if name not in state.models:
            raise RequestError(422, "model", f"model={name!r} is not served here; available: "
                               + ", ".join(state.models))
        model = state.models[name]
        params, plan = await run_in_threadpool(resolve_long, req, model, state.limits(name),
                                               config.max_total_seconds)
        if state.store.count(QUEUED) >= config.max_queue:
            raise queue_full()
        job_id = new_job_id()
        seeds = [params["seed"]]
        job = await run_in_threadpool(state.store.add, job_id, name, params, {}, seeds, None, config.max_queue)
        if job is None:
            raise queue_full()
        state.metrics.inc("sa3_jobs_submitted_total", model=name)
        if name in state.workers:
            state.workers[name].wake()
        body = {"id": job_id, "status": QUEUED, "url": f"/v1/jobs/{job_id}", "stream_url": f"/v1/jobs/{job_id}/stream",
                "seeds": seeds, "warnings": schedule_warnings(model, params),
                KIND: {"duration": params["duration"], "schedule": params["schedule"], **plan_info(plan)}}
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs/{job_id}/stream", responses={200: {"content": {"audio/wav": {}}}, **errors},
             response_class=StreamingResponse, summary="A long-form job's audio while it is being made (WAV, "
             "chunked; lengths unknown)")
    def stream(job_id: str, bit_depth: int = Query(  # noqa: B008
            32, description="sample format: 16 or 24-bit PCM, or 32-bit float (the stored samples exactly)",
            json_schema_extra={"enum": list(STREAM_BIT_DEPTHS)})):
        if bit_depth not in STREAM_BIT_DEPTHS:
            raise RequestError(422, "bit_depth", f"bit_depth={bit_depth} is invalid; 16, 24 or 32 is required")
        job = get_job(job_id)
        if not is_long(job.params):
            raise RequestError(409, None, f"job {job_id} is not a long-form job; fetch its audio from "
                               f"/v1/jobs/{job_id}/audio once it is completed", kind="not_streamable")
        if job.status in FINISHED and job.status != COMPLETED:
            raise RequestError(409, None, f"job {job_id} is {job.status}; there is no audio to stream",
                               kind="not_ready")
        model = state.models.get(job.model)
        if model is None:
            raise RequestError(409, None, f"job {job_id}'s model {job.model!r} is not served here any more",
                               kind="not_ready")
        if job.status == COMPLETED and not (job.outputs and state.store.file_path(job_id, job.outputs[0]).is_file()):
            raise RequestError(404, "job_id", f"the audio of job {job_id} was deleted or expired", kind="not_found")
        chunks = stream_chunks(state.store, job_id, model.defaults.sample_rate, model.autoencoder.audio_channels,
                               bit_depth)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                   "Content-Disposition": f'inline; filename="{job_id}.wav"'}
        return StreamingResponse(chunks, media_type="audio/wav", headers=headers)
