"""Plan a generation: everything decided before the first model runs.

`make_plan` turns a resolved `GenerationRequest` and the loaded components into a `Plan` with no
model work: the lengths and masks, the seeds and their generators, the starting noise (the
reference's first draw), the schedule and each step's sampler tensors, which model calls are
guided, and which LoRA state each step runs with. The sampling loop then only looks things up in
the plan, so a step never has to ask the device anything.

Ping-pong's per-step noise is drawn from the plan's `rng` by the loop, one draw per step, in the
reference's order (nothing else draws in between), so its memory stays one step's worth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import masks
from .audio import as_channels_first, check_sample_rate, read_audio
from .guidance import cfg_applies
from .models.noise import NoiseSource
from .request import DEFAULT_LIMITS, GenerationRequest, Limits, OptionError, inpaint_regions, is_number
from .sampling import build_schedule, call_times, random_seed, shift_from_options, step_tables


@dataclass
class Plan:
    """A resolved request laid out for the run (see the module docstring)."""

    request: GenerationRequest
    num_samples: int  # audio samples generated (the longest item + headroom, aligned)
    latent_length: int
    lengths: list[int]  # valid latents of each item (the rest is padding)
    padding_mask: torch.Tensor  # (B, T) bool, True on valid latents
    audio_mask: torch.Tensor | None  # audio-rate keep-mask (1 keep, 0 regenerate) or None
    init: tuple[torch.Tensor, int] | None  # (audio, sample rate) as given
    inpaint: tuple[torch.Tensor, int] | None
    seeds: list[int]
    rng: NoiseSource
    noise: torch.Tensor  # the starting noise (B, C, T), model dtype
    sigma_max: float
    tables: dict[str, torch.Tensor]  # per-step sampler tensors (steps, B), from the (B, steps + 1) schedule
    guided: list[tuple[bool, ...]]  # per step, per model call: guided (2B batch) or plain
    lora_steps: list[int] = field(default_factory=list)  # per step: index into lora_states
    lora_states: list[tuple[bool, ...]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.guided)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)


def load_audio_input(value, name: str, limits: Limits = DEFAULT_LIMITS) -> tuple[torch.Tensor, int]:
    """(sample_rate, audio) as the reference takes it, (audio, sample_rate) as torchaudio returns it
    (told apart by type), or a path to an audio file. Audio: tensor (C, T) / (T,), numpy (T,) / (T, C).
    Rates, channels and sizes are held to `limits` (a file's while it is decoded)."""
    if not isinstance(value, (tuple, list)):
        try:
            audio, sr = read_audio(value, max_values=limits.max_input_values, name=name)
        except FileNotFoundError as e:
            raise OptionError(name, str(value), "", str(e)) from None
        limits.check_audio(name, sr, audio.shape[0], audio.shape[-1])
        return audio, sr
    first, second = value
    sr, audio = (first, second) if is_number(first) else (second, first)
    sr = check_sample_rate(sr, f"{name} sample rate", limits.min_input_rate, limits.max_input_rate)
    audio = as_channels_first(audio, name)
    limits.check_audio(name, sr, audio.shape[0], audio.shape[-1])
    return audio, sr


def sampling_shift(r: GenerationRequest, config: dict):
    """The request's dist_shift (else the config's) as a shift object; options the shift's class does
    not take are refused naming dist_shift."""
    shift = r.dist_shift
    if shift is not None and not isinstance(shift, dict):
        return shift
    options = shift if shift is not None else config["model"]["diffusion"].get("sampling_distribution_shift_options")
    try:
        return shift_from_options(options)
    except (ValueError, TypeError) as e:
        where = "" if shift is not None else "the model config's sampling_distribution_shift_options: "
        raise OptionError("dist_shift", options, "", f"{where}{e}") from None


def check_schedule(schedule: torch.Tensor, r: GenerationRequest) -> None:
    """A schedule from the shift must be finite and inside [0, 1], or sampling makes NaN audio."""
    if not bool(torch.isfinite(schedule).all()) or float(schedule.min()) < 0 or float(schedule.max()) > 1:
        given = "the model config's sampling_distribution_shift_options" if r.dist_shift is None else "these options"
        raise OptionError("dist_shift", r.dist_shift, "", f"{given} give a schedule with NaN or infinite steps, or "
                          f"steps outside [0, 1] (e.g. {schedule.flatten()[:4].tolist()}); choose other shift options")


def inpaint_layout(request: GenerationRequest, inpaint: tuple[torch.Tensor, int] | None):
    """The regions to regenerate (seconds), clipped to the output (`resolve` refused any that starts
    after it); continuation's runs from the end of the given audio to the duration."""
    end = max(request.duration)
    if request.continuation:
        start = inpaint[0].shape[-1] / inpaint[1]
        if start >= end:
            raise OptionError("duration", end, "", f"continuation: duration={end:g} must be longer than the "
                              f"inpaint audio ({start:.2f} s)")
        return [start], [end]
    regions = inpaint_regions(request.inpaint_mask_start_seconds, request.inpaint_mask_end_seconds)
    if regions is None:
        return None, None
    clipped = [(s, min(e, end)) for s, e in regions]
    return [s for s, _ in clipped], [e for _, e in clipped]


def make_seeds(request: GenerationRequest, device: torch.device) -> tuple[list[int], NoiseSource]:
    """The seed rule (see `request`): an int seeds torch's global generator for the whole batch (as
    the reference); a list gives each item its own generator. -1 draws from [0, 99999)."""
    noise_device = request.noise_device
    if isinstance(request.seed, list):
        seeds = [random_seed() if s == -1 else s for s in request.seed]
        return seeds, NoiseSource.per_item(seeds, device=noise_device or device)
    seed = random_seed() if request.seed == -1 else request.seed
    torch.manual_seed(seed)
    return [seed] * request.batch_size, NoiseSource(device=noise_device)


def make_plan(c, request: GenerationRequest) -> Plan:
    """Plan a resolved request for the components `c` (see `pipeline.Components`)."""
    r, device, sr = request, c.device, c.sample_rate
    b = r.batch_size
    limits = getattr(c, "limits", DEFAULT_LIMITS)
    shift = sampling_shift(r, c.config)
    init = load_audio_input(r.init_audio, "init_audio", limits) if r.init_audio is not None else None
    inpaint = load_audio_input(r.inpaint_audio, "inpaint_audio", limits) if r.inpaint_audio is not None else None
    starts, ends = inpaint_layout(r, inpaint)
    ratio = c.autoencoder.downsampling_ratio
    encoder_cfg = c.config["model"]["pretransform"]["config"]["encoder"]["config"]
    num_samples = masks.audio_sample_size(
        r.duration, sample_rate=sr, downsampling_ratio=ratio, padding_seconds=r.duration_padding_sec,
        latents_per_align=masks.latents_per_alignment(encoder_cfg), sample_size=r.sample_size)
    length = num_samples // ratio
    audio_mask = masks.build_audio_inpaint_mask(
        num_samples=num_samples, sample_rate=sr, durations=r.duration, batch_size=b, start_seconds=starts,
        end_seconds=ends, mask=r.inpaint_mask, device=device)
    lengths = masks.valid_lengths(r.duration, sample_rate=sr, downsampling_ratio=ratio, latent_length=length,
                                  padding_seconds=r.duration_padding_sec)

    seeds, rng = make_seeds(r, device)
    noise = rng.randn((b, c.latent_channels, length), device).to(c.dtype)  # the reference's first draw

    sigma_max = r.init_noise_level if init is not None else 1.0
    content = masks.content_latents(r.duration, sample_rate=sr, downsampling_ratio=ratio)
    schedule = build_schedule(r.steps, content, sigma_max, shift)  # on the host: the plan reads it
    check_schedule(schedule, r)
    tables = step_tables(r.sampler_type, schedule, c.dtype)
    times = call_times(r.sampler_type, tables)
    guided = [tuple(cfg_applies(r.cfg_scale, t, r.cfg_interval) for t in ts) for ts in times]
    plan = Plan(r, num_samples, length, lengths.tolist(), masks.padding_mask(lengths, length).to(device),
                audio_mask, init, inpaint, seeds, rng, noise, sigma_max,
                {k: v.to(device) for k, v in tables.items()}, guided)
    loras = getattr(c, "loras", None)
    if r.lora_configs and not (loras and len(loras)):
        raise OptionError("lora_configs", r.lora_configs, "", "lora_configs was given but no LoRA is loaded")
    if loras is not None and len(loras):
        try:
            plan.lora_steps, plan.lora_states = loras.step_states(r.lora_configs, [ts[0] for ts in times])
        except ValueError as e:
            raise OptionError("lora_configs", r.lora_configs, "", str(e)) from None
    return plan
