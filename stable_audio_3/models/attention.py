"""Exact attention kernels shared by the SAME autoencoder and the DiT.

Every function here computes one precise pattern (full or a +-window band). A backend that cannot
compute that exact pattern for a call is never used for it: we fall back to SDPA and log once.
The reference once silently dropped the SAME-L window and produced garbage; we never do that.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash", "math")
# "auto" on the CPU, compiled: attention over at most this many keys (SAME-S's 34-token chunks) is
# written out (q k^T, softmax, v) for inductor to fuse, where PyTorch's CPU flash kernel is at its
# slowest: the compiled int8 decoder 6-7% faster at 174 and 388 latents. Eager keeps SDPA (no faster
# written out).
SHORT_CPU_KEYS = 64
# Forces a backend wherever none is passed explicitly (e.g. to rule out flash-attn without code changes).
BACKEND_ENV_VAR = "SA3_ATTENTION_BACKEND"

try:  # optional, CUDA only
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - flash-attn is not installed in CI
    _flash_attn_func = None

_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


def check_backend(backend: str | None) -> str:
    """The backend to use: `backend` when given, else $SA3_ATTENTION_BACKEND, else "auto" (logged once)."""
    if backend is None:
        forced = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
        if forced:
            if forced not in BACKENDS:
                raise ValueError(f"{BACKEND_ENV_VAR}={forced!r} is not supported; allowed: {', '.join(BACKENDS)}")
            _log_once(f"attention backend {forced!r} (from {BACKEND_ENV_VAR})")
            return forced
        backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend={backend!r} is not supported; allowed: None, {', '.join(BACKENDS)}")
    if backend == "auto":
        flash = "flash-attn where it can run the call" if _flash_attn_func is not None else "flash-attn not installed"
        _log_once(f"attention backend 'auto' ({flash}; PyTorch SDPA otherwise)")
    else:
        _log_once(f"attention backend {backend!r}")
    return backend


def flash_available(q: torch.Tensor) -> bool:
    return _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def rope_angles(inv_freq: torch.Tensor, length: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """(length, 2 * len(inv_freq)) rotation angles for `positions` (default 0..length-1), in float32."""
    if positions is None:
        positions = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
    freqs = torch.outer(positions.to(inv_freq.device, torch.float32), inv_freq.float())
    return torch.cat((freqs, freqs), dim=-1)


def rope_table(angles: torch.Tensor, dim: int) -> torch.Tensor:
    """(2, length, dim // rot, 2, rot // 2) factors that `apply_rope` multiplies a head of `dim`
    features by, for `angles` (length, rot) from `rope_angles`: NeoX rotate-half RoPE on the
    first `rot` features, the others kept (factors 1 and 0).

    Made once per forward, outside the compiled blocks: inside one, inductor fuses sin / cos into
    every head's rotation and evaluates them per element, in scalar code."""
    length, rot = angles.shape
    if rot % 2 or dim % rot:
        raise ValueError(f"RoPE over {rot} of {dim} features: the rotated features must be even and divide the head")
    cos, sin = angles[:, : rot // 2].cos(), angles[:, : rot // 2].sin()
    table = torch.zeros(2, length, dim // rot, 2, rot // 2, device=angles.device)
    table[0, :, 1:] = 1
    table[0, :, 0, 0], table[0, :, 0, 1] = cos, cos
    table[1, :, 0, 0], table[1, :, 0, 1] = -sin, sin
    return table


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """RoPE on x (..., N, dim) with `table` from `rope_table` (insert axes between its N and its
    features to broadcast over heads); computed in float32.

    The rotated half is x's own features in swapped halves (a flip), scaled by signed sines: the
    products and sums of the textbook `x cos + rotate_half(x) sin`, bit for bit, without the
    concatenations that made the compiled kernels copy every head twice."""
    halves = x.float().unflatten(-1, table.shape[-3:])
    return (halves * table[0] + halves.flip(-2) * table[1]).flatten(-3).to(x.dtype)


@lru_cache(maxsize=64)
def _band_block_mask(n: int, block: int, window: tuple[int, int], device: str) -> torch.Tensor:
    """Boolean mask (num_blocks, block, block + left + right) for blocked band attention."""
    left, right = window
    num_blocks = -(-n // block)
    q_idx = torch.arange(num_blocks * block, device=device).view(num_blocks, block, 1)
    k_start = torch.arange(num_blocks, device=device).view(num_blocks, 1, 1) * block - left
    k_idx = k_start + torch.arange(block + left + right, device=device).view(1, 1, -1)
    delta = k_idx - q_idx
    valid = (delta >= -left) & (delta <= right) & (k_idx >= 0) & (k_idx < n)
    # Query rows past the end are discarded afterwards; let them see something to avoid NaN rows.
    return valid | (q_idx >= n)


def band_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int],
                        block: int = 128) -> torch.Tensor:
    """Exact band attention (key j visible to query i iff i-left <= j <= i+right) in O(n * block).

    Queries are cut into blocks; each block attends to its own span of keys plus a halo, in one
    batched SDPA call with a boolean mask. Shapes (B, H, N, D).
    """
    left, right = window
    n = q.shape[-2]
    block = max(1, min(block, n))
    num_blocks = -(-n // block)
    pad_q = num_blocks * block - n
    qb = F.pad(q, (0, 0, 0, pad_q)).unflatten(-2, (num_blocks, block))
    span = block + left + right
    # Keys padded so that block b sees positions [b*block - left, b*block + block + right).
    kp = F.pad(k, (0, 0, left, pad_q + right))
    vp = F.pad(v, (0, 0, left, pad_q + right))
    kb = kp.unfold(-2, span, block).transpose(-1, -2)
    vb = vp.unfold(-2, span, block).transpose(-1, -2)
    mask = _band_block_mask(n, block, (left, right), str(q.device))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    return out.flatten(-3, -2)[..., :n, :]


def dense_attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain softmax(q k^T / sqrt(d)) v with an optional boolean mask: the test oracle."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def band_mask(n: int, window: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    i = torch.arange(n, device=device)
    delta = i[None, :] - i[:, None]
    return (delta >= -window[0]) & (delta <= window[1])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: tuple[int, int] | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Self-attention over (B, H, N, D), either full or restricted to a band `window`."""
    if backend in ("auto", "flash") and flash_available(q):
        out = _flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            window_size=tuple(window) if window is not None else (-1, -1),
        )
        return out.transpose(1, 2)
    if backend == "flash":
        _log_once("flash-attn cannot run this call (not installed, not CUDA, or not fp16/bf16); using SDPA")
    if backend == "math":
        mask = None if window is None else band_mask(q.shape[-2], window, q.device)
        return dense_attention_math(q, k, v, mask)
    if window is None:
        if backend == "auto" and q.device.type == "cpu" and k.shape[-2] <= SHORT_CPU_KEYS \
                and torch.compiler.is_compiling():
            return dense_attention_math(q, k, v)
        return F.scaled_dot_product_attention(q, k, v)
    return band_attention_sdpa(q, k, v, window)
