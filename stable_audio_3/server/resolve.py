"""From a `GenerateRequest` to a stored job, and from stored jobs back to one `GenerationRequest`.

The request type (request.py) does every check that it knows (`verify`, then `resolve` against the
model's defaults and limits); its `OptionError` becomes a 422 naming the JSON field. What is left here
is what only the server knows: its limits (items and seconds per request), the LoRA names it offers,
the uploads, and a dist_shift schedule sanity check.

Seeds follow the type's rule: an int seed gives the job's items one shared generator (the job reports
that seed for every item), a list gives each item its own. -1 is drawn here (`sampling.random_seed`, as
the Python API draws it), when the job is queued, so the job reports its seeds at once and a restarted job
runs with the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..request import PER_ITEM, GenerationRequest, ModelDefaults, OptionError, check_shift_options
from .schema import JSON_FIELDS, RequestError


@dataclass(frozen=True)
class ModelLimits:
    """What `resolve_request` needs to know about the model a request names."""

    name: str
    defaults: ModelDefaults  # steps, cfg, sampler, duration and maximum length, from the model's config
    latent_samples: int  # audio samples per latent (the autoencoder's downsampling ratio)
    loras: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, model, loras=()) -> ModelLimits:
        """The limits of a loaded `StableAudioModel`."""
        return cls(name, model.defaults, int(model.autoencoder.downsampling_ratio), tuple(loras))


def refusal(err: OptionError) -> RequestError:
    """The type's refusal as a 422 naming the JSON field (the JSON names are the type's own)."""
    return RequestError(422, err.field, err.spelled(err.field))


def check_dist_shift(value: dict | None, max_latents: int) -> None:
    """Refuse with a 422 naming `dist_shift` anything but what `shift_from_options` takes (the request's
    checks, then the type's own option names), and options whose schedule is not finite at any length the
    model can generate (the plan checks only the request's length, and it runs in the worker)."""
    if value is None:
        return
    import torch

    from ..sampling import shift_from_options

    try:  # the request type's own checks: a known type, numbers (booleans where the option is one)
        check_shift_options(value)
    except OptionError as e:
        raise refusal(e) from None
    try:  # and only that type's options
        shift = shift_from_options(value)
    except ValueError as e:
        raise RequestError(422, "dist_shift", f"dist_shift: {e}") from None
    lengths = torch.tensor([1.0, 2.0, 16.0, 256.0, 2048.0, float(max(1, max_latents))])
    try:
        schedule = shift.shift(torch.linspace(1, 0, 33), lengths)
    except (ArithmeticError, ValueError, TypeError, RuntimeError) as e:
        raise RequestError(422, "dist_shift", f"dist_shift: these options give no schedule ({e})") from None
    if not bool(torch.isfinite(schedule).all()):
        raise RequestError(422, "dist_shift", "dist_shift: these options give a schedule with NaN or infinite steps")


def _check_server_options(req, request: GenerationRequest, model: ModelLimits) -> list[dict]:
    """What the type cannot know: regions need an uploaded file, LoRAs are the server's names, the sample
    cap lies within the model. Returns the LoRAs as stored ({name, strength})."""
    if request.inpaint_mask_start_seconds is not None and request.inpaint_audio is None:  # verify: both or neither
        raise RequestError(422, "inpaint_mask_start_seconds", "inpaint_mask_start_seconds / inpaint_mask_end_seconds "
                           "need an 'inpaint_audio' file (multipart upload) holding the audio to inpaint")
    loras = []
    for i, lora in enumerate(req.loras or []):
        if lora.name not in model.loras:
            offered = ", ".join(map(repr, model.loras)) or "none (the server was started without --lora)"
            raise RequestError(422, f"loras[{i}].name",
                               f"LoRA {lora.name!r} is not offered for model {model.name!r}; available: {offered}")
        loras.append({"name": lora.name, "strength": float(lora.strength)})
    for i, config in enumerate(request.lora_configs or []):
        if config["lora_index"] >= len(loras):
            raise RequestError(422, f"lora_configs[{i}].lora_index",
                               f"lora_configs[{i}].lora_index={config['lora_index']} is invalid; this request's "
                               f"loras list has {len(loras)} entries (0-based indices)")
    low, high = model.latent_samples, model.defaults.max_samples
    if request.sample_size is not None and not low <= request.sample_size <= high:
        raise RequestError(422, "sample_size", f"sample_size={request.sample_size} is invalid; model {model.name!r} "
                           f"allows {low} (one latent) to {high} audio samples")
    return loras


def resolve_request(req, model: ModelLimits, max_items: int, max_total_seconds: float,
                    uploads: dict[str, tuple]) -> tuple[dict, list[int]]:
    """Check a `GenerateRequest` (with its decoded uploads: role -> ((C, T) tensor, sample rate)) against the
    type, the model and the server limits; returns (the job's stored params, the seed of each item)."""
    values = {name: getattr(req, name) for name in JSON_FIELDS}
    if values["lora_configs"] is not None:
        values["lora_configs"] = [c.model_dump() for c in values["lora_configs"]]
    request = GenerationRequest(**values, **uploads)
    try:
        request = request.verify().recommended(model.defaults)  # inpainting: the model's paste-back unless set
        n = request.implied_batch_size()
    except OptionError as e:
        raise refusal(e) from None
    if n > max_items:
        raise RequestError(422, "batch_size", f"batch_size={n} is too large; this server allows at most {max_items} "
                           "items per request")
    loras = _check_server_options(req, request, model)
    check_dist_shift(request.dist_shift, -(-model.defaults.max_samples // model.latent_samples))
    try:
        resolved = request.resolve(model.defaults)
    except OptionError as e:
        raise refusal(e) from None
    total = sum(resolved.duration)
    if total > max_total_seconds + 1e-9:
        raise RequestError(422, "duration", f"duration x batch_size = {total:g} s is too much; this server "
                           f"allows at most {max_total_seconds:g} s per request")
    from ..plan import inpaint_layout
    from ..sampling import random_seed

    if resolved.continuation:  # the plan's own length check, now rather than when the job runs
        try:
            inpaint_layout(resolved, uploads["inpaint_audio"])
        except OptionError as e:
            raise refusal(e) from None
    if isinstance(resolved.seed, list):
        seed: int | list[int] = [random_seed() if s == -1 else s for s in resolved.seed]
        seeds = list(seed)
    else:
        seed = random_seed() if resolved.seed == -1 else resolved.seed
        seeds = [seed] * n
    params = {name: getattr(resolved, name) for name in JSON_FIELDS}
    params.update(seed=seed, loras=loras)
    return json.loads(json.dumps(params)), seeds  # stored as JSON: tuples become lists now, not after a restart


def batch_key(model: str, params: dict, has_audio: bool) -> str | None:
    """Jobs with equal keys can share one generation and still give the audio each gives alone: the same
    model and options but for the per-item ones, and one common duration (the generated length follows the
    longest item). Jobs with audio inputs run alone (their inputs are shared by a whole batch), and so do
    jobs whose int seed is one generator shared by several items (a bigger batch would draw other noise)."""
    durations = params["duration"]
    if has_audio:  # regions and continuation are refused without inpaint audio
        return None
    if any(d != durations[0] for d in durations):
        return None
    if not isinstance(params["seed"], list) and len(durations) > 1:
        return None
    shared = {k: v for k, v in params.items() if k not in (*PER_ITEM, "batch_size")}
    shared.update(model=model, duration=durations[0], negative=params["negative_prompt"] is not None)
    return json.dumps(shared, sort_keys=True)


def batch_request(jobs: list[tuple[dict, list[int]]], **extra) -> GenerationRequest:
    """One request for jobs (stored params, item seeds) that share a batch key: their per-item lists one after
    the other, each item with its own seed; a lone job keeps its int seed (one generator for its items).
    `extra`: the audio inputs and other options the server adds (noise_device)."""
    first, first_seeds = jobs[0]
    values = {k: first[k] for k in JSON_FIELDS if k in first and k not in PER_ITEM}
    values["cfg_interval"] = tuple(values.get("cfg_interval", (0.0, 1.0)))
    shared = len(jobs) == 1 and isinstance(first.get("seed"), int) and len(first_seeds) > 1
    negatives = None if first["negative_prompt"] is None else [x for p, _ in jobs for x in p["negative_prompt"]]
    values.update(
        prompt=[x for p, _ in jobs for x in p["prompt"]],
        negative_prompt=negatives,
        duration=[x for p, _ in jobs for x in p["duration"]],
        seed=first["seed"] if shared else [s for _, seeds in jobs for s in seeds],
        batch_size=sum(len(seeds) for _, seeds in jobs),
    )
    return GenerationRequest(**values, **extra)
