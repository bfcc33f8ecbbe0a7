"""Every attention backend against a dense, explicitly masked reference on random inputs."""

from __future__ import annotations

import logging

import pytest
import torch

from stable_audio_3.models.attention import (
    apply_rope,
    attention,
    band_attention_sdpa,
    band_mask,
    check_backend,
    dense_attention_math,
    rope_angles,
    rope_table,
)
from stable_audio_3.models.same import ResamplingBlock

torch.manual_seed(0)


def _qkv(n: int, heads: int = 2, dim: int = 16, batch: int = 2, dtype=torch.float32):
    return [torch.randn(batch, heads, n, dim, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("n", [1, 2, 17, 34, 35, 127, 128, 129, 300])
@pytest.mark.parametrize("window", [(17, 17), (3, 5), (0, 0)])
@pytest.mark.parametrize("block", [7, 64, 128])
def test_band_sdpa_matches_dense_mask(n: int, window: tuple[int, int], block: int) -> None:
    q, k, v = _qkv(n)
    ours = band_attention_sdpa(q, k, v, window, block=block)
    ref = dense_attention_math(q.double(), k.double(), v.double(), band_mask(n, window)).float()
    assert torch.allclose(ours, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math", "flash"])
@pytest.mark.parametrize("window", [None, (17, 17)])
def test_every_backend_is_exact(backend: str, window, caplog) -> None:
    q, k, v = _qkv(100)
    mask = None if window is None else band_mask(100, window)
    ref = dense_attention_math(q.double(), k.double(), v.double(), mask).float()
    with caplog.at_level(logging.INFO):
        ours = attention(q, k, v, window=window, backend=backend)
    assert torch.allclose(ours, ref, atol=2e-6, rtol=1e-5)


def test_flash_fallback_is_logged_once(caplog) -> None:
    from stable_audio_3.models import attention as attn

    attn._logged.clear()
    q, k, v = _qkv(10)
    with caplog.at_level(logging.INFO, logger="stable_audio_3.models.attention"):
        attention(q, k, v, backend="flash")
        attention(q, k, v, backend="flash")
    messages = [r.message for r in caplog.records if "flash-attn cannot run" in r.message]
    assert len(messages) == 1


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="attention_backend='xformers' is not supported; allowed: None, auto"):
        check_backend("xformers")


# -- the SAME patterns through the resampling block vs a dense oracle -----------------------
def _dense_block(block, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One SAME transformer block computed densely with an explicit mask and RoPE positions."""
    attn = block.self_attn
    h = block.pre_norm(x)
    b, n, d = h.shape
    parts = attn.to_qkv(h).view(b, n, 5, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4)
    inv = block.rope.inv_freq
    ang = positions[:, None].float() * inv[None]
    ang = rope_table(torch.cat([ang, ang], -1), d // attn.heads)
    q, k, v, qd, kd = parts
    q, k = apply_rope(attn.q_norm(q), ang), apply_rope(attn.k_norm(k), ang)
    qd, kd = apply_rope(attn.q_norm(qd), ang), apply_rope(attn.k_norm(kd), ang)
    out = dense_attention_math(q, k, v, mask) - dense_attention_math(qd, kd, v, mask)
    x = x + attn.to_out(out.transpose(1, 2).reshape(b, n, d))
    return x + block.ff(block.ff_norm(x))


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("groups", [2, 4, 6])
def test_chunked_midpoint_shift_matches_dense(groups: int) -> None:
    blk = ResamplingBlock("encoder", 8, 32, stride=16, depth=4, dim_heads=16, chunk_size=32,
                          chunk_midpoint_shift=True)
    _randomise(blk)
    n = groups * 17
    x = torch.randn(1, n, 32)
    ours = blk._run_stack(x, "auto")
    # Pass 1: block-diagonal chunks of 34 with positions restarting in every chunk.
    idx = torch.arange(n)
    mask = (idx[:, None] // 34) == (idx[None, :] // 34)
    ref = x
    for b in blk.transformers[:2]:
        ref = _dense_block(b, ref, mask, idx % 34)
    # Pass 2: the sequence padded with copies of its first / last 17 tokens, chunked again.
    padded = torch.cat([ref[:, :17], ref, ref[:, -17:]], dim=1)
    pidx = torch.arange(n + 34)
    pmask = (pidx[:, None] // 34) == (pidx[None, :] // 34)
    for b in blk.transformers[2:]:
        padded = _dense_block(b, padded, pmask, pidx % 34)
    ref = padded[:, 17:-17]
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 3, 10])
def test_sliding_window_block_matches_dense(groups: int) -> None:
    blk = ResamplingBlock("decoder", 32, 8, stride=16, depth=2, dim_heads=16, sliding_window=[1, 1])
    _randomise(blk)
    n = groups * 17
    x = torch.randn(2, n, 32)
    ours = blk._run_stack(x, "auto")
    idx = torch.arange(n)
    ref = x
    for b in blk.transformers:
        ref = _dense_block(b, ref, band_mask(n, (17, 17)), idx)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("patches,latents_s,latents_l", [(16, 2, 1), (40, 4, 3), (64, 4, 4), (65, 6, 5)])
def test_lengths_that_are_not_a_chunk_multiple(patches: int, latents_s: int, latents_l: int) -> None:
    """The encoder zero-pads to whole chunks (SAME-S) or whole groups (SAME-L) before mapping."""
    s = ResamplingBlock("encoder", 8, 32, stride=16, depth=2, dim_heads=16, chunk_size=32,
                        chunk_midpoint_shift=True)
    l = ResamplingBlock("encoder", 8, 32, stride=16, depth=2, dim_heads=16, sliding_window=[1, 1])
    x = torch.randn(1, 8, patches)
    assert s(x).shape == (1, 32, latents_s)
    assert l(x).shape == (1, 32, latents_l)
    padded = torch.cat([x, torch.zeros(1, 8, latents_s * 16 - patches)], dim=-1)
    assert torch.allclose(s(x), s(padded))


def test_rope_is_the_textbook_rotate_half_bit_for_bit() -> None:
    x = torch.randn(2, 3, 7, 64)
    angles = rope_angles(1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32)), 7)
    head, tail = x[..., :32], x[..., 32:]
    half = torch.cat((-head[..., 16:], head[..., :16]), dim=-1)
    textbook = torch.cat((head * angles.cos() + half * angles.sin(), tail), dim=-1)
    assert torch.equal(apply_rope(x, rope_table(angles, 64)), textbook)
    # (B, N, H, D) heads: the table takes a head axis after N.
    assert torch.equal(apply_rope(x.transpose(1, 2), rope_table(angles, 64)[:, :, None]), textbook.transpose(1, 2))
    with pytest.raises(ValueError, match="RoPE over 32 of 48 features"):
        rope_table(angles, 48)


def test_rope_rotates_half_the_dims_only() -> None:
    x = torch.randn(3, 5, 8)
    out = apply_rope(x, rope_table(rope_angles(torch.tensor([1.0, 0.1]), 5), 8))
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert torch.allclose(out[:, 0], x[:, 0])  # position 0: no rotation
    assert torch.allclose(out[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1), atol=1e-5)
