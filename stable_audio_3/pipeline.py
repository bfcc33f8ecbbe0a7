"""generate(): request -> conditioning -> masks -> sampling -> decode.

The order of operations, and so of the random draws, is the reference's: the seed is applied, the
starting noise drawn, the conditioners run (they draw nothing), the init / inpaint audio encoded,
the sampler run (ping-pong draws once per step), and the latents decoded (per chunk: the bottleneck
dither, then the decoder's mask noise). A seeded call therefore reproduces the reference's audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import masks
from .audio import pad_or_crop, resample, set_channels
from .guidance import GuidedDenoiser, RunConditioning, guided_denoiser, prepare_conditioning
from .models.conditioning import Conditioner
from .models.lora import LoraSet
from .models.same import SAMEAutoencoder
from .plan import Plan, make_plan
from .request import DEFAULT_LIMITS, GenerationRequest, Limits
from .sampling import STEPS, noised_init

log = logging.getLogger(__name__)

class GenerationCancelled(RuntimeError):
    """The progress callback returned False."""


class NonFiniteAudio(ValueError):
    """The run produced NaN or infinite samples; generate() raises this instead of returning them."""


@dataclass
class Components:
    """Everything generate() needs from a loaded model."""

    conditioner: Conditioner
    dit: nn.Module
    autoencoder: SAMEAutoencoder
    config: dict
    device: torch.device
    attention_padding: str = "exclude"
    loras: LoraSet | None = None
    compile_step: Callable[[Callable], Callable] | None = None  # wraps each step function (torch.compile)
    bucket: Callable[[int], int] | None = None  # latent length -> the compiled step's (see compiling.py)
    limits: Limits = DEFAULT_LIMITS  # what requests are held to (see request.Limits)

    @property
    def sample_rate(self) -> int:
        return self.config.get("sample_rate", 44100)

    @property
    def latent_channels(self) -> int:
        return self.config["model"]["io_channels"]

    @property
    def chunked_default(self) -> bool:
        return bool(self.config["model"]["pretransform"].get("chunked", False))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype



PASTE_BACK_FADE_SECONDS = 0.02


def prepare_audio_input(c: Components, audio: torch.Tensor, sr: int, num_samples: int) -> torch.Tensor:
    """(1, channels, num_samples) float32: resampled, cropped or zero-padded to the generated length."""
    audio = resample(audio.to(c.device, torch.float32), sr, c.sample_rate, max_length=num_samples)
    return set_channels(pad_or_crop(audio, num_samples), c.autoencoder.audio_channels).unsqueeze(0)


def encode_audio_input(c: Components, audio: torch.Tensor) -> torch.Tensor:
    """Encode prepared audio (chunked per config)."""
    ae_dtype = next(c.autoencoder.parameters()).dtype
    return c.autoencoder.encode_audio(audio.to(ae_dtype), chunked=c.chunked_default)


def paste_back_weights(given: torch.Tensor, audio_mask: torch.Tensor, fade: int,
                       length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (B, 1, n), given audio (.., n)) over the first n = min(length, given) samples: how much of
    the given audio each output sample takes (1 where the mask keeps it, 0 where it is regenerated,
    crossfaded at the seams)."""
    if audio_mask.shape[-1] != given.shape[-1]:  # a short caller mask is stretched, as for the latents
        audio_mask = torch.nn.functional.interpolate(audio_mask[:, None], size=given.shape[-1], mode="nearest")[:, 0]
    n = min(length, given.shape[-1])
    return masks.paste_back_weights(audio_mask[..., :n].float(), fade)[:, None, :], given[..., :n]


@dataclass
class Encoded:
    """The run's conditioning: prompt tokens, the unconditional side's, and the inpainting input."""

    cross: torch.Tensor
    glob: torch.Tensor
    local: torch.Tensor
    negative: torch.Tensor | None
    negative_mask: torch.Tensor | None
    init_latents: torch.Tensor | None
    inpaint_wave: torch.Tensor | None


def encode(c: Components, plan: Plan) -> Encoded:
    """Prompts through the conditioners, init / inpaint audio through the encoder (no random draws)."""
    r, device = plan.request, c.device
    cond = c.conditioner.encode([{"prompt": p, "seconds_total": d} for p, d in zip(r.prompt, r.duration,
                                                                                  strict=True)], device)
    negative = None
    if r.negative_prompt is not None:
        negative = c.conditioner.encode([{"prompt": p, "seconds_total": d}
                                         for p, d in zip(r.negative_prompt, r.duration, strict=True)], device)
    init_latents = inpaint_wave = inpaint_latents = None
    if plan.init is not None:
        init_latents = encode_audio_input(c, prepare_audio_input(c, *plan.init, plan.num_samples))
        init_latents = init_latents.repeat(plan.batch_size, 1, 1)
    if plan.inpaint is not None:
        inpaint_wave = prepare_audio_input(c, *plan.inpaint, plan.num_samples)
        inpaint_latents = encode_audio_input(c, inpaint_wave)
    latent_mask = None if plan.audio_mask is None else masks.mask_to_latents(plan.audio_mask, plan.latent_length)
    local = masks.local_add_cond(latent_mask, inpaint_latents, batch_size=plan.batch_size,
                                 channels=c.latent_channels, latent_length=plan.latent_length, device=device)
    dtype = c.dtype
    return Encoded(cond.cross_attn_cond.to(dtype), cond.global_cond.to(dtype), local.to(dtype),
                   None if negative is None else negative.cross_attn_cond,
                   None if negative is None else negative.cross_attn_mask, init_latents, inpaint_wave)


def sample_plan(c: Components, plan: Plan, enc: Encoded, callback=None) -> torch.Tensor:
    """Run the plan's sampling steps; each step only looks up its tensors, denoisers and LoRA state.

    With `c.bucket` (a compiled step) the latents run at a bucketed length: every random draw keeps
    the request's true length and order, the extra positions are zeros that the DiT treats as
    padding and the guidance ignores, and they are cut off at the end."""
    r, length = plan.request, plan.latent_length
    run_length = length if c.bucket is None else max(length, c.bucket(length))

    def grow(a: torch.Tensor, value=0) -> torch.Tensor:
        return a if run_length == length else torch.cat([a, a.new_full((*a.shape[:-1], run_length - length),
                                                                         value)], dim=-1)

    x = grow(plan.noise)
    if enc.init_latents is not None:
        x = noised_init(grow(enc.init_latents.to(x.dtype)), x, plan.sigma_max)
    local = grow(enc.local)
    denoiser = guided_denoiser(c.dit, plan.lengths, run_length, grow(plan.padding_mask, False),
                               attention_padding=c.attention_padding, cfg_scale=r.cfg_scale, apg_scale=r.apg_scale,
                               cfg_norm_threshold=r.cfg_norm_threshold, scale_phi=r.scale_phi, device=c.device,
                               real_length=None if c.bucket is None else length, bucket=c.bucket)
    wants = dict(guided=any(map(any, plan.guided)), plain=not all(map(all, plan.guided)))
    conditioning: dict[int, RunConditioning] = {}  # per LoRA state
    functions: dict[tuple[bool, ...], Callable] = {}  # per pattern of guided calls
    previous = torch.zeros_like(x)
    try:
        for i in range(plan.steps):
            state = plan.lora_steps[i] if plan.lora_steps else 0
            if plan.lora_steps and (i == 0 or state != plan.lora_steps[i - 1]):
                c.loras.apply_state(plan.lora_states[state])
            if state not in conditioning:  # prepared under the LoRA state it is used with
                conditioning[state] = prepare_conditioning(c.dit, enc.cross, enc.glob, local, enc.negative,
                                                           enc.negative_mask, **wants)
            if plan.guided[i] not in functions:
                functions[plan.guided[i]] = step_function(STEPS[r.sampler_type], denoiser, plan.guided[i],
                                                          c.compile_step)
            k = {name: table[i] for name, table in plan.tables.items()}
            if r.sampler_type == "pingpong":
                k["noise"] = grow(plan.rng.randn_like(plan.noise))
            x_next, previous = functions[plan.guided[i]](x, k, previous, conditioning[state])
            if callback is not None and callback(i + 1, plan.steps, previous[..., :length]) is False:
                raise GenerationCancelled(f"generation cancelled by the callback at step {i + 1}/{plan.steps}")
            x = x_next
    finally:
        if plan.lora_states:
            c.loras.apply_state(c.loras.all_enabled_state)
    return x[..., :length].clone() if c.compile_step is not None else x  # not a CUDA graph's own buffer


def step_function(step: Callable, denoiser: GuidedDenoiser, guided: tuple[bool, ...],
                  wrap: Callable | None = None) -> Callable:
    """`f(x, k, previous, cond) -> (x_next, denoised)`: one sampling step whose model calls are guided
    or plain as `guided` says; `wrap` (e.g. torch.compile) is applied once per distinct pattern."""

    def one_step(x: torch.Tensor, k: dict[str, torch.Tensor], previous: torch.Tensor, cond: RunConditioning):
        calls = tuple(partial(denoiser.guided if g else denoiser.plain, cond=cond) for g in guided)
        return step(calls, x, k, previous)

    return one_step if wrap is None else wrap(one_step)


def decode(c: Components, plan: Plan, latents: torch.Tensor, inpaint_wave: torch.Tensor | None,
           on_audio: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor:
    """Latents -> audio (B, C, T) float32: decoded (drawing the decoder's noise from the plan's
    generators), pasted back, zeroed past each item's valid length, clamped and cut as requested.

    Every step after the decoder is position-wise, so it is applied to each stretch the chunked
    decoder finishes; `on_audio(audio, start_sample)` gets those stretches, final, in order."""
    r, sr, ratio = plan.request, c.sample_rate, c.autoencoder.downsampling_ratio
    ae_dtype = next(c.autoencoder.parameters()).dtype
    chunked = c.chunked_default if r.chunked_decode is None else r.chunked_decode
    length = latents.shape[-1] * ratio
    weight = given = None
    if r.inpaint_paste_back:
        weight, given = paste_back_weights(inpaint_wave, plan.audio_mask, int(PASTE_BACK_FADE_SECONDS * sr), length)
    keep = plan.padding_mask.repeat_interleave(ratio, dim=-1)[:, None, :]
    if keep.shape[-1] >= length:
        keep = keep[..., :length]
    else:
        keep = torch.nn.functional.pad(keep, (0, length - keep.shape[-1]), value=False)
    end = int(max(r.duration) * sr) if r.truncate_output_to_duration else length
    pieces: list[torch.Tensor] = []

    def finish(audio: torch.Tensor, start: int) -> None:
        stop = start + audio.shape[-1]
        if weight is not None and start < weight.shape[-1]:
            n = min(stop, weight.shape[-1]) - start
            audio = audio.float().clone()
            w = weight[..., start : start + n]
            audio[..., :n] = w * given[..., start : start + n].to(audio) + (1 - w) * audio[..., :n]
        audio = (audio * keep[..., start:stop].to(audio.dtype)).float()
        if r.clamp:
            audio = audio.clamp(-1, 1)
        audio = audio[..., : max(0, end - start)]  # items of other durations: the longest; cut each to its own
        pieces.append(audio)
        if on_audio is not None and audio.shape[-1]:
            if not bool(torch.isfinite(audio).all()):
                raise NonFiniteAudio(non_finite_message(c, r, "audio"))
            on_audio(audio, start)

    c.autoencoder.decode_audio(latents.to(ae_dtype), chunked=chunked, rng=plan.rng, on_chunk=finish)
    return torch.cat(pieces, dim=-1)


def generate(c: Components, request: GenerationRequest, callback=None,
             on_audio: Callable[[torch.Tensor, int], None] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Audio (B, C, T) (or the latents) and the seeds used, for a resolved request: plan, then
    encode -> sample -> decode. Everything that can fail on the request fails in the plan.
    `on_audio(audio, start_sample)` receives the audio stretch by stretch as the decoder finishes it."""
    plan = make_plan(c, request)
    enc = encode(c, plan)
    latents = sample_plan(c, plan, enc, callback)
    result = latents if request.return_latents else decode(c, plan, latents, enc.inpaint_wave, on_audio)
    if not bool(torch.isfinite(result).all()):
        raise NonFiniteAudio(non_finite_message(c, request, "latents" if request.return_latents else "audio"))
    return result, plan.seeds


def non_finite_message(c: Components, r: GenerationRequest, what: str) -> str:
    """Why a run's output is not finite: the options that can overflow it, the likeliest first."""
    causes = []
    loras = c.loras
    if loras is not None and len(loras):
        strengths = ", ".join(f"{name} (lora_index {i}) at strength {s:g}"
                              for i, (name, s) in enumerate(zip(loras.names, loras.strengths, strict=True)))
        causes.append(f"the LoRA strength or the LoRA file ({strengths}); try a strength nearer 1 or another file")
    if r.dist_shift is not None:
        causes.append(f"the shift options dist_shift={r.dist_shift!r}; try dist_shift=None (the model's)")
    if r.cfg_scale > 10 or r.cfg_norm_threshold > 0 or r.scale_phi > 0:
        causes.append(f"strong guidance (cfg_scale={r.cfg_scale:g}); try a smaller cfg_scale")
    if not causes:
        causes.append("the model's weights (a damaged checkpoint) or the compute dtype; try dtype='float32'")
    return f"the generated {what} contains NaN or infinite values; likely cause: " + "; or ".join(causes)
