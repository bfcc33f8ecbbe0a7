"""generate(): request -> conditioning -> masks -> sampling -> decode.

The order of operations, and so of the random draws, is the reference's: the seed is applied, the
starting noise drawn, the conditioners run (they draw nothing), the init / inpaint audio encoded,
the sampler run (ping-pong draws once per step), and the latents decoded (per chunk: the bottleneck
dither, then the decoder's mask noise). A seeded call therefore reproduces the reference's audio.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import masks
from .audio import as_channels_first, check_sample_rate, pad_or_crop, read_audio, resample, set_channels
from .models.conditioning import Conditioner
from .models.noise import NoiseSource
from .models.same import SAMEAutoencoder
from .sampling import (
    SAMPLERS,
    build_schedule,
    default_sampler,
    noised_init,
    sample,
    seed_generator,
    shift_from_options,
)

log = logging.getLogger(__name__)

AudioInput = tuple[int, "torch.Tensor | np.ndarray"] | tuple["torch.Tensor | np.ndarray", int] | str | os.PathLike


class GenerationCancelled(RuntimeError):
    """The progress callback returned False."""


@dataclass
class Components:
    """Everything generate() needs from a loaded model."""

    conditioner: Conditioner
    dit: nn.Module
    autoencoder: SAMEAutoencoder
    config: dict
    device: torch.device
    attention_padding: str = "exclude"

    @property
    def sample_rate(self) -> int:
        return self.config.get("sample_rate", 44100)

    @property
    def latent_channels(self) -> int:
        return self.config["model"]["io_channels"]

    @property
    def diffusion_objective(self) -> str:
        return self.config["model"]["diffusion"].get("diffusion_objective", "v")

    @property
    def chunked_default(self) -> bool:
        return bool(self.config["model"]["pretransform"].get("chunked", False))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    @property
    def max_samples(self) -> int:
        """The longest output the model was trained for (its config's sample_size)."""
        return int(self.config.get("sample_size", masks.DEFAULT_SAMPLE_SIZE))


def _per_item(value, batch_size: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} values but batch_size={batch_size}; give one per item or one")
        return list(value)
    return [value] * batch_size


def _check_prompts(values: list, name: str) -> list[str]:
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{name}={v!r} is invalid; a string is required")
    return values


def _check_number(value, name: str, low: float | None = None, high: float | None = None,
                  integer: bool = False) -> None:
    ok = masks.is_number(value) and math.isfinite(value) and (not integer or int(value) == value)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        bounds = "" if low is None else f" >= {low}" if high is None else f" in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} is invalid; {kind}{bounds} is required")


def load_audio_input(value: AudioInput, name: str) -> tuple[torch.Tensor, int]:
    """(sample_rate, audio) as the reference takes it, (audio, sample_rate) as torchaudio returns it
    (told apart by type), or a path to an audio file. Audio: tensor (C, T) / (T,), numpy (T,) / (T, C)."""
    if isinstance(value, (str, os.PathLike)):
        return read_audio(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name}: a bare array has no sample rate; pass (sample_rate, audio) or a file path")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        first, second = value
        if masks.is_number(first) and isinstance(second, (torch.Tensor, np.ndarray)):
            sr, audio = first, second
        elif masks.is_number(second) and isinstance(first, (torch.Tensor, np.ndarray)):
            audio, sr = first, second
        else:
            raise ValueError(f"{name}: expected (sample_rate, audio) or (audio, sample_rate) with a tensor or "
                             f"numpy array, got ({type(first).__name__}, {type(second).__name__})")
        return as_channels_first(audio, name), check_sample_rate(sr, f"{name} sample rate")
    raise ValueError(f"{name}: expected (sample_rate, audio) or a path to an audio file, got {type(value).__name__}")


def _check_seeds(seed, batch_size: int) -> list[int] | None:
    """None for one shared seed; else one seed per item (-1 entries are drawn at random)."""
    if not isinstance(seed, (list, tuple)):
        return None
    if len(seed) != batch_size:
        raise ValueError(f"seed has {len(seed)} values but batch_size={batch_size}; give one per item or one seed")
    out = []
    for s in seed:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not -1 <= s < 2**63:
            raise ValueError(f"seed={s!r} is invalid; an integer >= 0, or -1 for a random seed, is required")
        out.append(int(np.random.randint(0, 99999)) if s == -1 else int(s))
    return out


PASTE_BACK_FADE_SECONDS = 0.02


def prepare_audio_input(c: Components, audio: torch.Tensor, sr: int, num_samples: int) -> torch.Tensor:
    """(1, channels, num_samples) float32: resampled, cropped or zero-padded to the generated length."""
    audio = resample(audio.to(c.device, torch.float32), sr, c.sample_rate)
    return set_channels(pad_or_crop(audio, num_samples), c.autoencoder.audio_channels).unsqueeze(0)


def encode_audio_input(c: Components, audio: torch.Tensor) -> torch.Tensor:
    """Encode prepared audio (chunked per config)."""
    ae_dtype = next(c.autoencoder.parameters()).dtype
    return c.autoencoder.encode_audio(audio.to(ae_dtype), chunked=c.chunked_default)


def _legacy_generate(
    c: Components,
    prompt: str | Sequence[str] | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    duration: float | Sequence[float] = 120,
    steps: int = 8,
    cfg_scale: float = 1.0,
    seed: int | Sequence[int] = -1,
    batch_size: int = 1,
    init_audio: AudioInput | None = None,
    init_noise_level: float = 1.0,
    inpaint_audio: AudioInput | None = None,
    inpaint_mask: torch.Tensor | None = None,
    inpaint_mask_start_seconds: float | Sequence[float] | None = None,
    inpaint_mask_end_seconds: float | Sequence[float] | None = None,
    continuation: bool = False,
    inpaint_paste_back: bool = False,
    sample_size: int | None = None,
    duration_padding_sec: float = masks.DEFAULT_DURATION_PADDING_SEC,
    apg_scale: float = 1.0,
    sampler_type: str | None = None,
    dist_shift=None,
    cfg_interval: tuple[float, float] = (0.0, 1.0),
    scale_phi: float = 0.0,
    cfg_norm_threshold: float = 0.0,
    chunked_decode: bool | None = None,
    return_latents: bool = False,
    truncate_output_to_duration: bool = True,
    clamp: bool = True,
    callback: Callable[[int, int, torch.Tensor], bool | None] | None = None,
    noise_device: str | torch.device | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Generate audio (B, 2, samples) in [-1, 1] (or the latents) and the seeds used.

    See `StableAudioModel.generate` for the arguments. Everything is validated before any model runs.
    """
    # -- validate everything before any heavy work --------------------------------------------
    if prompt is None:
        raise ValueError("prompt is required: a string, or a list with one string per batch item")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is invalid; a positive integer is required")
    prompts = _check_prompts(_per_item(prompt, batch_size, "prompt"), "prompt")
    negatives = None
    if negative_prompt is not None:
        negatives = _check_prompts(_per_item(negative_prompt, batch_size, "negative_prompt"), "negative_prompt")
    durations = masks.check_durations(duration, batch_size)
    sr = c.sample_rate
    if sample_size is None:
        sample_size = c.max_samples  # the model's own maximum (the reference caps every model at 120 s)
    max_duration = sample_size / sr
    for d in durations:
        if d > max_duration + 1e-9:
            raise ValueError(f"duration={d:g} is too long; this model allows at most {max_duration:.2f} seconds")
    _check_number(steps, "steps", 1, integer=True)
    _check_number(cfg_scale, "cfg_scale", 0)
    _check_number(apg_scale, "apg_scale", 0, 1)
    _check_number(init_noise_level, "init_noise_level", 0, 1)
    _check_number(scale_phi, "scale_phi", 0, 1)
    _check_number(cfg_norm_threshold, "cfg_norm_threshold", 0)
    if not (isinstance(cfg_interval, (tuple, list)) and len(cfg_interval) == 2
            and all(masks.is_number(v) and 0 <= v <= 1 for v in cfg_interval) and cfg_interval[0] <= cfg_interval[1]):
        raise ValueError(f"cfg_interval={cfg_interval!r} is invalid; (low, high) with 0 <= low <= high <= 1 required")
    if sampler_type is None:
        sampler_type = default_sampler(c.diffusion_objective)
    elif sampler_type not in SAMPLERS:
        raise ValueError(f"sampler_type={sampler_type!r} is unknown; allowed: {', '.join(map(repr, SAMPLERS))}")
    if chunked_decode not in (None, True, False):
        raise ValueError(f"chunked_decode={chunked_decode!r} is invalid; allowed: None (config), True, False")
    item_seeds = _check_seeds(seed, batch_size)
    if item_seeds is None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed={seed!r} is invalid; an integer, -1 (random) or a list of per-item seeds is required")
    shift = dist_shift
    if shift is None or isinstance(shift, dict):
        shift = shift_from_options(shift if shift is not None else
                                   c.config["model"]["diffusion"].get("sampling_distribution_shift_options"))
    elif not callable(getattr(shift, "shift", None)):
        raise ValueError("dist_shift must be None, a dict of shift options, or an object with .shift(t, seq_len)")
    init = load_audio_input(init_audio, "init_audio") if init_audio is not None else None
    inpaint = load_audio_input(inpaint_audio, "inpaint_audio") if inpaint_audio is not None else None
    if continuation:
        if inpaint is None:
            raise ValueError("continuation=True needs inpaint_audio: the audio to continue")
        if inpaint_mask_start_seconds is None and inpaint_mask_end_seconds is None:
            inpaint_mask_start_seconds = inpaint[0].shape[-1] / inpaint[1]
            inpaint_mask_end_seconds = max(durations)
            if inpaint_mask_start_seconds >= inpaint_mask_end_seconds:
                raise ValueError(
                    f"continuation: duration={max(durations)} must be longer than the inpaint audio "
                    f"({inpaint_mask_start_seconds:.2f} s)"
                )
    regions = masks.inpaint_regions(inpaint_mask_start_seconds, inpaint_mask_end_seconds)
    if (regions is not None or inpaint_mask is not None) and inpaint is None:
        log.warning("an inpaint mask was given without inpaint_audio: the kept regions are conditioned on silence")
    if not isinstance(inpaint_paste_back, bool):
        raise ValueError(f"inpaint_paste_back={inpaint_paste_back!r} is invalid; True or False is required")
    if inpaint_paste_back and (inpaint is None or (regions is None and inpaint_mask is None)):
        raise ValueError("inpaint_paste_back=True needs inpaint_audio and the regions to regenerate "
                         "(inpaint_mask_start_seconds / inpaint_mask_end_seconds, inpaint_mask, or continuation)")
    ratio = c.autoencoder.downsampling_ratio
    encoder_cfg = c.config["model"]["pretransform"]["config"]["encoder"]["config"]
    num_samples = masks.audio_sample_size(
        durations, sample_rate=sr, downsampling_ratio=ratio,
        latents_per_align=masks.latents_per_alignment(encoder_cfg),
        padding_seconds=duration_padding_sec, sample_size=sample_size,
    )
    length = num_samples // ratio
    device = c.device

    # -- masks, seed, noise -------------------------------------------------------------------
    audio_mask = masks.build_audio_inpaint_mask(
        num_samples=num_samples, sample_rate=sr, durations=durations,
        batch_size=batch_size, start_seconds=inpaint_mask_start_seconds, end_seconds=inpaint_mask_end_seconds,
        mask=inpaint_mask, device=device,
    )
    latent_mask = None if audio_mask is None else masks.mask_to_latents(audio_mask, length)
    if item_seeds is None:
        seeds = [seed_generator(seed)] * batch_size
        rng = NoiseSource(device=noise_device)
    else:
        seeds = item_seeds
        rng = NoiseSource.per_item(seeds, device=noise_device or device)
    noise = rng.randn((batch_size, c.latent_channels, length), device).to(c.dtype)

    # -- conditioning -------------------------------------------------------------------------
    batch = [{"prompt": p, "seconds_total": d} for p, d in zip(prompts, durations, strict=True)]
    cond = c.conditioner.encode(batch, device)
    negative = None
    if negatives is not None:
        negative = c.conditioner.encode(
            [{"prompt": p, "seconds_total": d} for p, d in zip(negatives, durations, strict=True)], device)

    init_latents = None
    if init is not None:
        init_latents = encode_audio_input(c, prepare_audio_input(c, *init, num_samples)).repeat(batch_size, 1, 1)
    inpaint_latents = inpaint_wave = None
    if inpaint is not None:
        inpaint_wave = prepare_audio_input(c, *inpaint, num_samples)
        inpaint_latents = encode_audio_input(c, inpaint_wave)
    local = masks.local_add_cond(latent_mask, inpaint_latents, batch_size=batch_size,
                                 channels=c.latent_channels, latent_length=length, device=device)

    lengths = masks.valid_lengths(durations, sample_rate=sr, downsampling_ratio=ratio, latent_length=length,
                                  padding_seconds=duration_padding_sec).to(device)
    pad_mask = masks.padding_mask(lengths, length)
    dtype = c.dtype
    cross, glob, local = cond.cross_attn_cond.to(dtype), cond.global_cond.to(dtype), local.to(dtype)
    neg_cross = None if negative is None else negative.cross_attn_cond
    neg_mask = None if negative is None else negative.cross_attn_mask

    step_cache: dict = {}  # conditioning projections, computed at the first step and reused

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return c.dit(
            x, t, cross_attn_cond=cross, global_cond=glob, local_add_cond=local, padding_mask=pad_mask,
            negative_cross_attn_cond=neg_cross, negative_cross_attn_mask=neg_mask, cfg_scale=cfg_scale,
            apg_scale=apg_scale, cfg_interval=tuple(cfg_interval), cfg_norm_threshold=cfg_norm_threshold,
            scale_phi=scale_phi, attention_padding=c.attention_padding, cache=step_cache,
        ).to(x.dtype)

    def on_step(info: dict) -> None:
        if callback is not None and callback(info["i"] + 1, info["steps"], info["denoised"]) is False:
            raise GenerationCancelled(f"generation cancelled by the callback at step {info['i'] + 1}/{info['steps']}")

    # -- sampling -----------------------------------------------------------------------------
    sigma_max = init_noise_level if init_latents is not None else 1.0
    x = noised_init(init_latents.to(noise.dtype), noise, sigma_max) if init_latents is not None else noise
    content = masks.content_latents(durations, sample_rate=sr, downsampling_ratio=ratio)
    schedule = build_schedule(steps, content, sigma_max, shift, device=device)
    latents = sample(denoise, x, schedule, sampler_type, on_step, rng.randn_like)
    if return_latents:
        return latents, seeds

    # -- decode -------------------------------------------------------------------------------
    ae_dtype = next(c.autoencoder.parameters()).dtype
    chunked = c.chunked_default if chunked_decode is None else chunked_decode
    audio = c.autoencoder.decode_audio(latents.to(ae_dtype), chunked=chunked, rng=rng)
    if inpaint_paste_back:
        audio = paste_back(audio.float(), inpaint_wave, audio_mask, int(PASTE_BACK_FADE_SECONDS * sr))
    keep = pad_mask.repeat_interleave(ratio, dim=-1)[:, None, :]
    if keep.shape[-1] >= audio.shape[-1]:
        keep = keep[..., : audio.shape[-1]]
    else:
        keep = torch.nn.functional.pad(keep, (0, audio.shape[-1] - keep.shape[-1]), value=False)
    audio = (audio * keep.to(audio.dtype)).float()
    if clamp:
        audio = audio.clamp(-1, 1)
    if truncate_output_to_duration:
        if all(d == durations[0] for d in durations):
            audio = audio[..., : int(durations[0] * sr)]
        else:
            log.warning("durations differ between items: returning the longest; trim each item to its duration")
    return audio, seeds


def paste_back(audio: torch.Tensor, given: torch.Tensor, audio_mask: torch.Tensor, fade: int) -> torch.Tensor:
    """The given audio wherever the mask keeps it, the generated audio elsewhere, crossfaded at the seams."""
    if audio_mask.shape[-1] != given.shape[-1]:  # a short caller mask is stretched, as for the latents
        audio_mask = torch.nn.functional.interpolate(audio_mask[:, None], size=given.shape[-1], mode="nearest")[:, 0]
    n = min(audio.shape[-1], given.shape[-1])
    weight = masks.paste_back_weights(audio_mask[..., :n].float(), fade)[:, None, :]
    out = audio.clone()
    out[..., :n] = weight * given[..., :n].to(audio) + (1 - weight) * audio[..., :n]
    return out


def generate(c: Components, request, callback=None):
    """Temporary bridge: a resolved GenerationRequest through the old keyword pipeline."""
    import dataclasses
    kwargs = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    kwargs.pop("lora_configs")
    if kwargs["init_audio"] is None:
        kwargs["init_noise_level"] = 1.0
    seed = kwargs["seed"]
    durations = kwargs["duration"]
    out, seeds = _legacy_generate(c, callback=callback, **kwargs)
    if not isinstance(seed, list):
        seeds = [seeds[0]] * request.batch_size
    if kwargs["truncate_output_to_duration"] and not kwargs["return_latents"] and len(set(durations)) > 1:
        out = out[..., : int(max(durations) * c.sample_rate)]
    return out, seeds
