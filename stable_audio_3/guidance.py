"""Classifier-free guidance with adaptive projected guidance (APG), as pure tensor functions.

The DiT predicts a rectified-flow velocity v; with x_t = (1 - t) x0 + t eps the denoised estimate is
x_t - t v, so sigma = t. Guidance mixes the conditional and unconditional *denoised* estimates and
converts the result back to a velocity. APG keeps only the part of the guidance direction that is
orthogonal to the conditional estimate, which avoids the over-saturation of plain CFG at high scales.

Everything is computed with sigma in float32, so a half-precision model's guided velocity comes back
in float32 (as the reference's does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def cfg_applies(cfg_scale: float, sigma: float, interval: tuple[float, float] = (0.0, 1.0)) -> bool:
    """Guidance runs only for cfg_scale != 1 and a sigma (the first item's) inside `interval`, inclusive."""
    return cfg_scale != 1.0 and interval[0] <= sigma <= interval[1]


def unconditional_cross_cond(
    cross_attn_cond: torch.Tensor,
    negative: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-attention input of the unconditional half.

    Without a negative prompt it is all zeros (the seconds token included). With one, the negative
    tokens whose mask is 0 are replaced by zeros: the learned padding vector is dropped there.
    """
    zeros = torch.zeros_like(cross_attn_cond)
    if negative is None:
        return zeros
    if negative.shape != cross_attn_cond.shape:
        raise ValueError(
            f"negative_cross_attn_cond has shape {tuple(negative.shape)} but cross_attn_cond has "
            f"{tuple(cross_attn_cond.shape)}; they must match"
        )
    negative = negative.to(cross_attn_cond.dtype)
    if negative_mask is None:
        return negative
    return torch.where(negative_mask.bool()[..., None], negative, zeros)


def apg_project(
    v: torch.Tensor, direction: torch.Tensor, padding_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split v (B, C, T) into its components parallel and orthogonal to `direction`, per item.

    With a padding mask (B, T; True = valid) only valid positions define the direction, and the
    orthogonal part is zero at padded positions. Computed in float32, returned in v's dtype.
    """
    dtype = v.dtype
    v, direction = v.float(), direction.float()
    dims = (-2, -1)
    if padding_mask is None:
        unit = direction / direction.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        parallel = (v * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = v - parallel
    else:
        keep = padding_mask[:, None, :].float()
        masked = direction * keep
        unit = masked / masked.norm(dim=dims, keepdim=True).clamp_min(1e-8)
        parallel = (v * keep * unit).sum(dim=dims, keepdim=True) * unit
        # unit is already 0 at padded positions, so the unmasked v gives the same inner product.
        orthogonal = (v - (v * unit).sum(dim=dims, keepdim=True) * unit) * keep
    return parallel.to(dtype), orthogonal.to(dtype)


def guided_velocity(
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond_v: torch.Tensor,
    uncond_v: torch.Tensor,
    cfg_scale: float,
    apg_scale: float = 1.0,
    padding_mask: torch.Tensor | None = None,
    norm_threshold: float = 0.0,
    scale_phi: float = 0.0,
) -> torch.Tensor:
    """Guided velocity from the conditional / unconditional velocities of one batched DiT call.

    x (B, C, T) is the model input, sigma (B,) its noise level (= t). `apg_scale` blends plain CFG
    (0) with full APG (1); `norm_threshold` > 0 caps the guidance norm per item; `scale_phi` != 0
    rescales the result's per-position channel std towards the conditional one ("CFG rescale").
    """
    s = sigma[:, None, None]
    cond_d = x - cond_v * s
    uncond_d = x - uncond_v * s
    diff = cond_d - uncond_d
    if norm_threshold > 0:
        measured = diff if padding_mask is None else diff * padding_mask[:, None, :].float()
        norm = measured.norm(p=2, dim=(-2, -1), keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    if apg_scale == 0.0:
        direction = diff
    else:
        _, orthogonal = apg_project(diff, cond_d, padding_mask)
        direction = orthogonal if apg_scale == 1.0 else apg_scale * orthogonal + (1 - apg_scale) * diff
    guided_d = cond_d + (cfg_scale - 1) * direction
    v = (x - guided_d) / s
    if scale_phi != 0.0:
        ratio = cond_v.std(dim=1, keepdim=True) / v.std(dim=1, keepdim=True)
        v = scale_phi * (v * ratio) + (1 - scale_phi) * v
    return v


@dataclass
class RunConditioning:
    """A run's prepared DiT conditioning: for plain passes (B) and for guided ones (2B: conditional
    then unconditional half). Passed to every step as an argument, so one compiled step serves a
    whole run even when a LoRA switch changes it part-way."""

    plain: Any = None
    guided: Any = None


class GuidedDenoiser:
    """The denoiser of one sampling run: the DiT, guided or plain, over a `RunConditioning`.

    `plain(x, t, cond)` is one unguided pass; `guided(x, t, cond)` runs the conditional and
    unconditional halves as one batch of 2B and mixes them (`guided_velocity`). Which one a model
    call uses is decided up front from the schedule (`cfg_applies`), so neither reads a tensor value
    on the host. Both return the velocity in x's dtype.
    """

    def __init__(self, dit, padding, guided_padding, padding_mask=None, cfg_scale: float = 1.0,
                 apg_scale: float = 1.0, norm_threshold: float = 0.0, scale_phi: float = 0.0):
        self.dit, self.padding, self.guided_padding, self.padding_mask = dit, padding, guided_padding, padding_mask
        self.cfg_scale, self.apg_scale = cfg_scale, apg_scale
        self.norm_threshold, self.scale_phi = norm_threshold, scale_phi

    def plain(self, x: torch.Tensor, t: torch.Tensor, cond: RunConditioning) -> torch.Tensor:
        return self.dit.step_velocity(x, t.float(), cond.plain, self.padding).to(x.dtype)

    def guided(self, x: torch.Tensor, t: torch.Tensor, cond: RunConditioning) -> torch.Tensor:
        out_dtype = x.dtype
        t = t.float()
        x = x.to(self.dit.dtype)
        v = self.dit.step_velocity(torch.cat([x, x]), torch.cat([t, t]), cond.guided, self.guided_padding)
        cond_v, uncond_v = v.chunk(2, dim=0)
        return guided_velocity(x, t, cond_v, uncond_v, self.cfg_scale, self.apg_scale, self.padding_mask,
                               self.norm_threshold, self.scale_phi).to(out_dtype)


def prepare_conditioning(dit, cross_attn_cond: torch.Tensor, global_cond: torch.Tensor,
                         local_add_cond: torch.Tensor | None, negative_cross_attn_cond: torch.Tensor | None = None,
                         negative_cross_attn_mask: torch.Tensor | None = None, *, plain: bool = True,
                         guided: bool = True) -> RunConditioning:
    """The DiT's step-invariant inputs for plain and/or guided passes. The unconditional half uses
    the negative prompt's tokens (those with mask 0 zeroed) or, without one, zeros; both halves
    share the global and local conditioning."""
    out = RunConditioning()
    if plain:
        out.plain = dit.prepare(cross_attn_cond, global_cond, local_add_cond)
    if guided:
        dtype = dit.dtype
        cross = cross_attn_cond.to(dtype)
        negative = None if negative_cross_attn_cond is None else negative_cross_attn_cond.to(dtype)
        uncond = unconditional_cross_cond(cross, negative, negative_cross_attn_mask)

        def twice(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else torch.cat([a, a], dim=0)

        out.guided = dit.prepare(torch.cat([cross, uncond], dim=0), twice(global_cond), twice(local_add_cond))
    return out


def guided_denoiser(dit, lengths: list[int], latent_length: int, padding_mask: torch.Tensor | None = None, *,
                    attention_padding: str = "exclude", cfg_scale: float = 1.0, apg_scale: float = 1.0,
                    cfg_norm_threshold: float = 0.0, scale_phi: float = 0.0,
                    device: torch.device | str = "cpu", real_length: int | None = None,
                    bucket=None) -> GuidedDenoiser:
    """The run's denoiser for items with `lengths` valid latents of `latent_length`; `padding_mask`
    (B, T) bool is the same as a mask, for APG and the norm threshold (the pipeline always gives one).
    `real_length` / `bucket`: the latents run at a bucketed length (see `dit.Padding.from_lengths`)."""
    padding = dit.padding(lengths, latent_length, attention_padding, device, real_length, bucket)
    guided_padding = dit.padding(lengths * 2, latent_length, attention_padding, device, real_length, bucket)
    padding_mask = None if padding_mask is None else padding_mask.bool()
    return GuidedDenoiser(dit, padding, guided_padding, padding_mask, cfg_scale, apg_scale, cfg_norm_threshold,
                          scale_phi)
