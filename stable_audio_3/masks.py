"""The tensor bookkeeping of generate() before sampling: lengths, the padding mask, the inpaint mask and
the DiT's local-add conditioning.

Lengths. The latent sequence covers the longest requested duration plus `duration_padding_sec` of
headroom (6 s by default), rounded up to whole latents and then to the autoencoder's attention-chunk
alignment (2 latents), and capped by `sample_size` (a request option; by default the model's own
maximum, its config's sample_size: 120 s for small, 380 s for medium, 6.13 s for the demo).
Each item's valid length is its own duration in latents (rounded up) plus the
headroom in whole latents; later positions are padding that attention ignores and decoding zeroes.
The durations and regions given here were checked by `request.GenerationRequest.verify`.
Training used the same layout, so the model expects silence-free headroom after the content.

Inpaint masks are 1 where the given audio is kept and 0 where it is regenerated; the DiT receives
[mask, latents * mask] along channels (mask first). Plain text-to-audio gets all zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .request import DEFAULT_DURATION_PADDING_SEC, REFERENCE_SAMPLE_SIZE, inpaint_regions, is_number

DEFAULT_SAMPLE_SIZE = REFERENCE_SAMPLE_SIZE  # the reference generate()'s cap (120 s) when a config has none

Seconds = float | Sequence[float]


def _check_padding(padding_seconds: float) -> None:
    if not is_number(padding_seconds) or not math.isfinite(padding_seconds) or padding_seconds < 0:
        raise ValueError(f"duration_padding_sec={padding_seconds!r} is invalid; a number of seconds >= 0 is required")


def latents_per_alignment(encoder_config: dict) -> int:
    """Latents per attention chunk of the SAME encoder (chunk_size patches / stride; absent chunk_size = 32).

    Sequence lengths are rounded up to a multiple of it: 2 for both SAME-S and SAME-L.
    """
    chunk_size = encoder_config.get("chunk_size") or 32
    return max(1, chunk_size // encoder_config["strides"][0])


def audio_sample_size(
    durations: Sequence[float],
    *,
    sample_rate: int,
    downsampling_ratio: int,
    latents_per_align: int,
    padding_seconds: float = DEFAULT_DURATION_PADDING_SEC,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> int:
    """Audio samples the model generates: longest duration + headroom, aligned, capped by `sample_size`.

    The latent length is this // downsampling_ratio.
    """
    _check_padding(padding_seconds)
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < downsampling_ratio:
        raise ValueError(
            f"sample_size={sample_size!r} is invalid; an integer number of audio samples >= {downsampling_ratio} "
            "(one latent) is required"
        )
    longest = max(durations)
    target = int((longest + padding_seconds) * sample_rate)
    target = -(-target // downsampling_ratio) * downsampling_ratio
    align = downsampling_ratio * latents_per_align
    target = -(-target // align) * align
    return min(target, sample_size)


def content_latents(durations: Sequence[float], *, sample_rate: int, downsampling_ratio: int) -> list[int]:
    """Latents covering each requested duration, ceil(int(d * sr) / ratio): the length the schedule's
    distribution shift sees (`use_effective_length_for_schedule`) and the start of each item's headroom."""
    return [-(-int(d * sample_rate) // downsampling_ratio) for d in durations]


def valid_lengths(
    durations: Sequence[float],
    *,
    sample_rate: int,
    downsampling_ratio: int,
    latent_length: int,
    padding_seconds: float = DEFAULT_DURATION_PADDING_SEC,
) -> torch.Tensor:
    """Unpadded latents per item (B,): content + int(headroom seconds in latents), at most latent_length."""
    _check_padding(padding_seconds)
    headroom = int(padding_seconds * sample_rate / downsampling_ratio)
    content = content_latents(durations, sample_rate=sample_rate, downsampling_ratio=downsampling_ratio)
    return torch.tensor([min(n + headroom, latent_length) for n in content], dtype=torch.long)


def padding_mask(lengths: torch.Tensor, latent_length: int) -> torch.Tensor:
    """(B, T) bool, True on each item's first `lengths[b]` latents."""
    return torch.arange(latent_length, device=lengths.device)[None, :] < lengths[:, None]


# -- inpainting ----------------------------------------------------------------------------------


def mask_from_regions(
    regions: Sequence[tuple[float, float]], num_samples: int, sample_rate: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(1, num_samples) audio-rate mask: 1 everywhere except [int(s * sr), int(e * sr)) of each region."""
    mask = torch.ones(1, num_samples, device=device)
    for start, end in regions:
        mask[:, min(int(start * sample_rate), num_samples) : min(int(end * sample_rate), num_samples)] = 0
    return mask


def fit_mask(mask: torch.Tensor, num_samples: int, batch_size: int) -> torch.Tensor:
    """A caller's audio-rate mask as (1 or B, <= num_samples) float, cut to the generated length.

    A shorter mask is kept short and therefore stretched by `mask_to_latents`, as in the reference.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"inpaint_mask must be a torch.Tensor of shape (batch, samples), got {type(mask).__name__}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2 or mask.shape[0] not in (1, batch_size) or mask.shape[1] == 0:
        raise ValueError(
            f"inpaint_mask has shape {tuple(mask.shape)}; expected (1, samples) or ({batch_size}, samples) "
            "at the model's sample rate"
        )
    return mask[:, :num_samples].float()


def clear_after_duration(mask: torch.Tensor, durations: Sequence[float], sample_rate: int) -> torch.Tensor:
    """Zero the mask past the longest duration: the headroom is always generated, as in training."""
    end = int(max(durations) * sample_rate)
    if end >= mask.shape[-1]:
        return mask
    mask = mask.clone()
    mask[:, end:] = 0
    return mask


def mask_to_latents(mask: torch.Tensor, latent_length: int) -> torch.Tensor:
    """(B, N) audio-rate mask -> (B, T) latent mask by nearest sampling: latent j takes sample
    floor(j * N / T), i.e. the first sample of its frame when N = T * ratio."""
    return F.interpolate(mask.unsqueeze(1), size=latent_length, mode="nearest").squeeze(1)


def build_audio_inpaint_mask(
    *,
    num_samples: int,
    sample_rate: int,
    durations: Sequence[float],
    batch_size: int = 1,
    start_seconds: Seconds | None = None,
    end_seconds: Seconds | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """The audio-rate keep-mask (1 or B, <= num_samples), or None without inpainting.

    Regions in seconds take precedence over a prebuilt `mask` (as in the reference).
    """
    regions = inpaint_regions(start_seconds, end_seconds)
    if regions is not None:
        mask = mask_from_regions(regions, num_samples, sample_rate, device)
    elif mask is not None:
        mask = fit_mask(mask, num_samples, batch_size).to(device)
    else:
        return None
    return clear_after_duration(mask, durations, sample_rate)


def build_inpaint_mask(*, latent_length: int, **kwargs) -> torch.Tensor | None:
    """The latent-rate inpaint mask (1 or B, T), or None without inpainting (arguments: see
    `build_audio_inpaint_mask`)."""
    mask = build_audio_inpaint_mask(**kwargs)
    return None if mask is None else mask_to_latents(mask, latent_length)


def paste_back_weights(mask: torch.Tensor, fade_samples: int) -> torch.Tensor:
    """Weights of the given audio when pasting it back over a generated result (same shape as `mask`).

    1 wherever the audio-rate mask keeps audio; inside each regenerated region the weight falls
    linearly to 0 over its first `fade_samples` and rises again over its last ones, so the kept
    audio is exactly the original and every seam is a short crossfade.
    """
    n = mask.shape[-1]
    idx = torch.arange(n, device=mask.device).expand(mask.shape)
    kept = mask > 0.5
    far = n + fade_samples + 1
    previous = torch.where(kept, idx, torch.full_like(idx, -far)).cummax(-1).values
    following = torch.where(kept, idx, torch.full_like(idx, 2 * far)).flip(-1).cummin(-1).values.flip(-1)
    distance = torch.minimum(idx - previous, following - idx).float()
    return (1 - distance / (fade_samples + 1)).clamp(min=0)


def local_add_cond(
    mask: torch.Tensor | None,
    inpaint_latents: torch.Tensor | None,
    *,
    batch_size: int,
    channels: int,
    latent_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The DiT's local-add conditioning (B, 1 + C, T): [keep mask, inpaint latents * mask].

    No mask: all zeros (regenerate everything). A mask without audio: zero latents. Batch-1 masks and
    latents are repeated to the batch (the reference crashes for batch > 1 with a seconds-built mask).
    """
    if mask is None:
        mask = torch.zeros(batch_size, latent_length, device=device)
    mask = mask.to(device).float().reshape(-1, 1, latent_length).expand(batch_size, 1, latent_length)
    if inpaint_latents is None:
        masked = torch.zeros(batch_size, channels, latent_length, device=device)
    else:
        if inpaint_latents.shape[-2:] != (channels, latent_length) or inpaint_latents.shape[0] not in (1, batch_size):
            raise ValueError(
                f"inpaint latents have shape {tuple(inpaint_latents.shape)}; expected (1 or {batch_size}, "
                f"{channels}, {latent_length})"
            )
        masked = inpaint_latents.to(device).expand(batch_size, -1, -1) * mask
    return torch.cat([mask.to(masked.dtype), masked], dim=1)
