"""Request and response shapes of the HTTP API, and the checks that turn a request into a job.

Every refusal is a `RequestError` naming the offending field, so clients get
`{"error": {"type": ..., "field": ..., "message": ...}}` with a 4xx status and never a 500.
"""

from __future__ import annotations

import inspect
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SAMPLER_TYPES = ("pingpong", "euler", "rk4", "dpmpp")
AUDIO_ROLES = ("init_audio", "inpaint_audio")
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1
MAX_LORAS = 8  # LoRAs one request may stack


class RequestError(Exception):
    """A refusal: HTTP `status`, the request `field` at fault (or None) and a message for people."""

    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        kind: str = "invalid_request",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"type": self.kind, "field": self.field, "message": self.message}}


Prompt = str
Seconds = float


class LoraRequest(BaseModel):
    """One LoRA to apply: a name the server was started with (`--lora NAME=PATH`) and its strength."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="a LoRA name from GET /v1/models (`loras`)")
    strength: float = Field(1.0, description="any finite number: 0 is the base model, 1 the LoRA as trained")


class GenerateRequest(BaseModel):
    """The controls of `StableAudioModel.generate`, as JSON. Lists give one value per item."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str | None = Field(None, description="a name from GET /v1/models (default: the first one)")
    prompt: str | list[str] = Field(..., description="text prompt, or one per item")
    negative_prompt: str | list[str] | None = Field(None, description="used when cfg_scale != 1")
    duration: float | list[float] | None = Field(
        None, description="seconds (default: the model's default_duration, see GET /v1/models)"
    )
    batch_size: int = Field(1, ge=1, description="number of items (outputs) for this request")
    seed: int | list[int] = Field(
        -1,
        description="-1: random; an int s gives items the "
        "seeds s, s+1, ...; or one seed per item (-1 entries drawn at random)",
    )
    steps: int | None = Field(None, ge=1, le=1000, description="default: 8 (50 for -base models)")
    cfg_scale: float | None = Field(None, ge=0, le=100, description="default: 1 (7 for -base models)")
    apg_scale: float = Field(1.0, ge=0, le=1)
    sampler_type: Literal["pingpong", "euler", "rk4", "dpmpp"] | None = None
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    scale_phi: float = Field(0.0, ge=0, le=1)
    cfg_norm_threshold: float = Field(0.0, ge=0)
    duration_padding_sec: float = Field(6.0, ge=0, le=60)
    chunked_decode: bool | None = None
    init_noise_level: float = Field(1.0, ge=0, le=1, description="audio-to-audio: how much of init_audio to keep")
    inpaint_mask_start_seconds: float | list[float] | None = Field(
        None, description="start of each region to generate (several regions: lists)"
    )
    inpaint_mask_end_seconds: float | list[float] | None = None
    continuation: bool = Field(False, description="keep all of inpaint_audio and continue it up to duration")
    inpaint_paste_back: bool = Field(
        False,
        description="put inpaint_audio back exactly over the kept parts of the result (20 ms crossfades inside "
        "each regenerated region); needs inpaint_audio with inpaint_mask_*_seconds or continuation",
    )
    dist_shift: dict[str, Any] | None = Field(
        None,
        description="timestep distribution shift: {'type': 'logsnr' | 'full' | 'flux' | 'none', ...its options} "
        "(logsnr: anchor_length, anchor_logsnr, rate, logsnr_end; full: base_shift, max_shift, max_length, "
        "min_length, use_sine; flux: min_length, max_length, alpha_min, alpha_max); null: the model config's",
    )
    sample_size: int | None = Field(
        None,
        ge=1,
        description="cap on the audio samples generated (default and maximum: the model's max_sample_size, "
        "see GET /v1/models); at least one latent (4096 samples)",
    )
    clamp: bool = Field(True, description="false: unclamped audio (the WAV output is 32-bit float)")
    loras: list[LoraRequest] | None = Field(
        None,
        max_length=MAX_LORAS,
        description="LoRAs to stack, in order, by the names the server was started with (GET /v1/models)",
    )


class BatchInfo(BaseModel):
    id: str | None
    jobs: int | None = Field(None, description="jobs generated together in this batch")
    items: int | None = Field(None, description="items (outputs) generated together")


class JobInfo(BaseModel):
    id: str
    model: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None = Field(None, description="queued jobs of this model ahead of this one")
    progress: float = Field(..., description="0..1, sampling steps done")
    step: int
    total_steps: int
    seeds: list[int]
    durations: list[float]
    num_outputs: int
    batch: BatchInfo
    attempts: int = Field(..., description="runs started (more than 1 after a restart)")
    worker: str | None = Field(None, description="host:pid:tag of the worker that ran it")
    timings: dict[str, float]
    error: str | None
    audio_urls: list[str]
    request: dict


class JobCreated(BaseModel):
    id: str
    status: str
    url: str
    seeds: list[int]


class ModelInfo(BaseModel):
    name: str
    sample_rate: int
    max_duration: float
    default_duration: float = Field(..., description="seconds generated when a request gives no duration")
    max_sample_size: int = Field(..., description="the largest sample_size a request may give")
    is_base: bool
    default_steps: int
    default_cfg_scale: float
    device: str
    queued: int
    running: int
    loras: list[str] = Field(..., description="LoRA names requests may use with this model")


@dataclass(frozen=True)
class ModelLimits:
    """What `resolve_request` needs to know about the model a request names."""

    name: str
    sample_rate: int
    max_samples: int  # the model's longest output in audio samples (its config's sample_size)
    latent_samples: int  # audio samples per latent (the autoencoder's downsampling ratio)
    default_duration: float
    is_base: bool
    recommended_steps: int = 8  # steps and cfg when a request gives none (the model's recommendations)
    recommended_cfg_scale: float = 1.0
    loras: tuple[str, ...] = ()

    @property
    def max_duration(self) -> float:
        return self.max_samples / self.sample_rate

    @classmethod
    def of(cls, name: str, model, loras=()) -> ModelLimits:
        """The limits of a loaded `StableAudioModel`."""
        return cls(
            name=name,
            sample_rate=int(model.sample_rate),
            max_samples=int(model.components.max_samples),
            latent_samples=int(model.autoencoder.downsampling_ratio),
            default_duration=float(model.default_duration),
            is_base=bool(model.is_base),
            recommended_steps=int(model.recommended_steps),
            recommended_cfg_scale=float(model.recommended_cfg_scale),
            loras=tuple(loras),
        )


def field_name(loc: tuple) -> str:
    """pydantic error location -> 'seed[1]' style; the union member names pydantic adds are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in (
            "str",
            "int",
            "float",
            "list[str]",
            "list[int]",
            "list[float]",
            "bool",
            "tuple[float, float]",
            "function-after",
            "literal['pingpong','euler','rk4','dpmpp']",
            "none",
            "list[LoraRequest]",
            "dict[str,any]",
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _per_item(value, n: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != n:
            raise RequestError(
                422, name, f"{name} has {len(value)} values but batch_size={n}; give one, or one per item"
            )
        return list(value)
    return [value] * n


def _regions(value, name: str) -> list[float] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values:
        raise RequestError(422, name, f"{name} is an empty list; give at least one number of seconds")
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise RequestError(422, name, f"{name}={v!r} is invalid; seconds >= 0 are required")
    return [float(v) for v in values]


def check_dist_shift(value: dict | None, max_latents: int) -> dict | None:
    """A `dist_shift` object as `shift_from_options` takes it, or a 422 naming `dist_shift`: a known type,
    only that type's options, numbers (booleans where the option is one), and a finite schedule."""
    if value is None:
        return None
    import torch

    from ..sampling import SHIFT_TYPES, shift_from_options

    if not isinstance(value.get("type", "full"), str):
        raise RequestError(422, "dist_shift", f"dist_shift.type={value['type']!r} is invalid; a type name is required")
    try:
        shift = shift_from_options(value)
    except ValueError as e:
        raise RequestError(422, "dist_shift", f"dist_shift: {e}") from None
    options = inspect.signature(SHIFT_TYPES[value.get("type", "full")]).parameters
    for key, v in value.items():
        if key == "type":
            continue
        if isinstance(options[key].default, bool):
            ok, kind = isinstance(v, bool), "true or false"
        else:
            ok, kind = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number"
        if not ok:
            raise RequestError(422, "dist_shift", f"dist_shift.{key}={v!r} is invalid; {kind} is required")
    lengths = torch.tensor([1.0, 2.0, 16.0, 256.0, 2048.0, float(max(1, max_latents))])
    try:
        schedule = shift.shift(torch.linspace(1, 0, 33), lengths)
    except (ArithmeticError, ValueError, TypeError, RuntimeError) as e:
        raise RequestError(422, "dist_shift", f"dist_shift: these options give no schedule ({e})") from None
    if not bool(torch.isfinite(schedule).all()):
        raise RequestError(422, "dist_shift", "dist_shift: these options give a schedule with NaN or infinite steps")
    return dict(value)


def resolve_request(
    req: GenerateRequest,
    model: ModelLimits,
    max_items: int,
    max_total_seconds: float,
    uploads: dict[str, float],
) -> tuple[dict, list[int]]:
    """Validate a request against the model and the server limits; returns (generate kwargs without the
    audio and seed, per-item seeds). `uploads`: the audio roles given, with their durations in seconds."""
    model_name, model_max_duration = model.name, model.max_duration
    n = req.batch_size
    if n > max_items:
        raise RequestError(422, "batch_size", f"batch_size={n} is too large; this server allows at most {max_items}")
    prompts = _per_item(req.prompt, n, "prompt")
    for p in prompts:
        if len(p) > MAX_PROMPT_CHARS:
            raise RequestError(422, "prompt", f"prompt is {len(p)} characters long; at most {MAX_PROMPT_CHARS}")
    negatives = None if req.negative_prompt is None else _per_item(req.negative_prompt, n, "negative_prompt")
    for p in negatives or []:
        if len(p) > MAX_PROMPT_CHARS:
            raise RequestError(422, "negative_prompt", f"negative_prompt is too long; at most {MAX_PROMPT_CHARS}")
    durations = [
        float(d) for d in _per_item(req.duration if req.duration is not None else model.default_duration, n, "duration")
    ]
    for d in durations:
        if not 0 < d <= model_max_duration + 1e-9:
            raise RequestError(
                422,
                "duration",
                f"duration={d:g} is invalid; model {model_name!r} allows more than 0 "
                f"and at most {model_max_duration:.2f} seconds",
            )
    if sum(durations) > max_total_seconds + 1e-9:
        raise RequestError(
            422,
            "duration",
            f"duration x batch_size = {sum(durations):g} s is too much; this server "
            f"allows at most {max_total_seconds:g} s per request",
        )
    if req.sample_size is not None:
        if not model.latent_samples <= req.sample_size <= model.max_samples:
            raise RequestError(
                422,
                "sample_size",
                f"sample_size={req.sample_size} is invalid; model {model_name!r} allows {model.latent_samples} "
                f"(one latent) to {model.max_samples} audio samples",
            )
        if max(durations) > req.sample_size / model.sample_rate + 1e-9:
            given = "duration" if req.duration is not None else "the default duration"
            raise RequestError(
                422,
                "sample_size",
                f"sample_size={req.sample_size} holds {req.sample_size / model.sample_rate:.3f} s, less than "
                f"{given} ({max(durations):g} s); raise sample_size or shorten duration",
            )
    lo, hi = req.cfg_interval
    if not 0 <= lo <= hi <= 1:
        raise RequestError(422, "cfg_interval", f"cfg_interval={[lo, hi]} is invalid; 0 <= low <= high <= 1 required")
    starts = _regions(req.inpaint_mask_start_seconds, "inpaint_mask_start_seconds")
    ends = _regions(req.inpaint_mask_end_seconds, "inpaint_mask_end_seconds")
    if (starts is None) != (ends is None) and not req.continuation:
        field = "inpaint_mask_end_seconds" if ends is None else "inpaint_mask_start_seconds"
        raise RequestError(422, field, "inpaint_mask_start_seconds and inpaint_mask_end_seconds go together")
    if starts is not None and ends is not None:
        if len(starts) != len(ends):
            raise RequestError(
                422,
                "inpaint_mask_end_seconds",
                f"{len(starts)} region starts but {len(ends)} ends; give one end per start",
            )
        for s, e in zip(starts, ends, strict=True):
            if s >= e:
                raise RequestError(
                    422, "inpaint_mask_end_seconds", f"region [{s:g}, {e:g}] is empty; start < end is required"
                )
    if req.inpaint_paste_back and ("inpaint_audio" not in uploads or (starts is None and not req.continuation)):
        raise RequestError(
            422,
            "inpaint_paste_back",
            "inpaint_paste_back needs an 'inpaint_audio' file and the regions to regenerate "
            "(inpaint_mask_start_seconds / inpaint_mask_end_seconds) or continuation",
        )
    if (starts is not None or req.continuation) and "inpaint_audio" not in uploads:
        field = "continuation" if req.continuation else "inpaint_mask_start_seconds"
        raise RequestError(422, field, "inpainting and continuation need an 'inpaint_audio' file (multipart upload)")
    if req.continuation and "inpaint_audio" in uploads and uploads["inpaint_audio"] >= max(durations):
        raise RequestError(
            422,
            "duration",
            f"continuation: duration={max(durations):g} must be longer than the "
            f"inpaint audio ({uploads['inpaint_audio']:.2f} s)",
        )

    dist_shift = check_dist_shift(req.dist_shift, -(-model.max_samples // model.latent_samples))
    loras = []
    for i, lora in enumerate(req.loras or []):
        if lora.name not in model.loras:
            offered = ", ".join(map(repr, model.loras)) or "none (the server was started without --lora)"
            raise RequestError(
                422,
                f"loras[{i}].name",
                f"LoRA {lora.name!r} is not offered for model {model_name!r}; available: {offered}",
            )
        if not math.isfinite(lora.strength):
            raise RequestError(422, f"loras[{i}].strength", f"strength={lora.strength!r} is invalid; a finite number")
        loras.append({"name": lora.name, "strength": float(lora.strength)})

    given = req.seed if isinstance(req.seed, list) else [req.seed]
    if isinstance(req.seed, int) and req.seed >= 0:
        given = [req.seed + n - 1]  # the last item's seed must fit too
    for s in given:
        if not -1 <= s <= MAX_SEED:
            raise RequestError(422, "seed", f"seed={s} is invalid; an integer in [0, 2**63) or -1 (random) is required")
    seeds = (
        [req.seed + i if req.seed >= 0 else -1 for i in range(n)]
        if isinstance(req.seed, int)
        else _per_item(req.seed, n, "seed")
    )
    for s in seeds:
        if not -1 <= s <= MAX_SEED:
            raise RequestError(422, "seed", f"seed={s} is invalid; an integer in [0, 2**63) or -1 (random) is required")
    seeds = [secrets.randbelow(2**31) if s == -1 else int(s) for s in seeds]

    params = {
        "prompt": prompts,
        "negative_prompt": negatives,
        "duration": durations,
        "steps": req.steps if req.steps is not None else model.recommended_steps,
        "cfg_scale": req.cfg_scale if req.cfg_scale is not None else model.recommended_cfg_scale,
        "apg_scale": req.apg_scale,
        "sampler_type": req.sampler_type,
        "cfg_interval": [lo, hi],
        "scale_phi": req.scale_phi,
        "cfg_norm_threshold": req.cfg_norm_threshold,
        "duration_padding_sec": req.duration_padding_sec,
        "chunked_decode": req.chunked_decode,
        "init_noise_level": req.init_noise_level,
        "inpaint_mask_start_seconds": starts,
        "inpaint_mask_end_seconds": ends,
        "continuation": req.continuation,
        "inpaint_paste_back": req.inpaint_paste_back,
        "dist_shift": dist_shift,
        "sample_size": req.sample_size,
        "clamp": req.clamp,
        "loras": loras,
    }
    return params, seeds


def batch_key(model: str, params: dict, has_audio: bool) -> str | None:
    """Jobs with equal keys can share one generate() call and still give the audio each gives alone:
    text-to-audio with the same model, sampling and guidance settings, LoRAs and strengths, and one common
    duration. Jobs with audio inputs or per-item durations run alone (their inputs are shared by a whole batch)."""
    durations = params["duration"]
    if has_audio or params["inpaint_mask_start_seconds"] is not None or params["continuation"]:
        return None
    if any(d != durations[0] for d in durations):
        return None
    shared = {k: v for k, v in params.items() if k not in ("prompt", "negative_prompt", "duration")}
    shared.update(model=model, duration=durations[0], negative=params["negative_prompt"] is not None)
    return json.dumps(shared, sort_keys=True)
