"""Chunked decode: decoder passes over the chunks' kept spans give the overlapping-chunk audio.

`decode_overlapping` is the reference's algorithm (one decode per overlapping chunk, each with its
own draws in chunk order, hard-cut stitched); `decode_audio(chunked=True)` must give the same
audio and leave the generators in the same state, while decoding every latent about once.
Tiny random-weight SAME-S-like (chunked attention, midpoint shift, kernel-3 output conv) and
SAME-L-like (band attention, RoPE) autoencoders, real modules.
"""

from __future__ import annotations

import copy

import pytest
import torch

from stable_audio_3.loading import packaged_config
from stable_audio_3.models.noise import NoiseSource
from stable_audio_3.models.same import SAMEAutoencoder, chunk_starts, decode_spans

TOL = 1e-5  # max|new - old| / max|old|, float32
TINY = {"channels": 16, "c_mults": [4], "transformer_depths": [4], "dim_heads": 32, "latent_dim": 32}
_MODELS: dict[str, SAMEAutoencoder] = {}


def tiny(name: str) -> SAMEAutoencoder:
    """The packaged SAME-S / SAME-L config at a tiny width (depth 4), random weights."""
    if name not in _MODELS:
        cfg = copy.deepcopy(packaged_config(name)["model"])
        cfg["latent_dim"] = cfg["bottleneck"]["config"]["dim"] = TINY["latent_dim"]
        for part in ("encoder", "decoder"):
            cfg[part]["config"].update(copy.deepcopy(TINY))
        if "sinusoidal_blocks" in cfg["decoder"]["config"]:
            cfg["decoder"]["config"]["sinusoidal_blocks"] = [min(2, cfg["decoder"]["config"]["sinusoidal_blocks"][0])]
        torch.manual_seed(0)
        ae = SAMEAutoencoder(cfg).eval().requires_grad_(False)
        with torch.no_grad():
            block = ae.decoder.layers[3]
            block.new_tokens.normal_()  # learned tokens that are not all equal
            ae.bottleneck.running_std.fill_(1.7)
        _MODELS[name] = ae
    return _MODELS[name]


def rel(new: torch.Tensor, old: torch.Tensor) -> float:
    assert new.shape == old.shape
    return ((new.double() - old.double()).abs().max() / old.double().abs().max()).item()


def latents(batch: int, frames: int) -> torch.Tensor:
    return torch.randn(batch, TINY["latent_dim"], frames, generator=torch.Generator().manual_seed(frames))


def count_decoder_latents(ae: SAMEAutoencoder) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    handle = ae.decoder.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[-1]))
    return calls, handle


CASES = [  # frames, batch, chunk_size, overlap, noise, chunks_per_pass
    (130, 1, 128, 32, True, 8),   # last chunk anchored 2 latents in: it keeps almost everything
    (175, 2, 128, 32, True, 8),   # odd length: the last chunk is on the other attention-chunk grid
    (300, 2, 128, 32, True, 8),
    (300, 1, 128, 32, False, 8),
    (300, 1, 128, 32, False, 2),  # two passes
    (61, 2, 16, 8, True, 3),      # many chunks, several passes
    (61, 1, 20, 9, False, 8),     # odd overlap
]


@pytest.mark.parametrize("name", ["same-s", "same-l"])
@pytest.mark.parametrize("frames,batch,chunk_size,overlap,noise,chunks_per_pass", CASES)
@torch.no_grad()
def test_spans_equal_overlapping_chunks(name: str, frames: int, batch: int, chunk_size: int, overlap: int,
                                        noise: bool, chunks_per_pass: int) -> None:
    ae = tiny(name)
    z = latents(batch, frames)
    seeds = [11 + i for i in range(batch)]
    old_rng, new_rng = NoiseSource.per_item(seeds), NoiseSource.per_item(seeds)
    old = ae.decode_overlapping(z, chunk_size, overlap, noise=noise, rng=old_rng)
    calls, handle = count_decoder_latents(ae)
    try:
        new = ae.decode_audio(z, chunked=True, chunk_size=chunk_size, overlap=overlap, noise=noise, rng=new_rng,
                              chunks_per_pass=chunks_per_pass)
    finally:
        handle.remove()
    assert rel(new, old) <= TOL
    n = len(chunk_starts(frames, chunk_size, chunk_size - overlap))
    assert len(calls) == -(-n // chunks_per_pass)  # one decoder pass per `chunks_per_pass` chunks
    assert max(calls) <= chunks_per_pass * chunk_size  # memory bounded like that many chunks
    assert sum(calls) < n * chunk_size  # less work than the overlapping chunks
    # Every chunk made its draws: the generators end in the same state.
    for g_old, g_new in zip(old_rng.generators, new_rng.generators, strict=True):
        assert torch.equal(g_old.get_state(), g_new.get_state())


@pytest.mark.parametrize("name", ["same-s", "same-l"])
@torch.no_grad()
def test_global_generator_draws_in_chunk_order(name: str) -> None:
    ae = tiny(name)
    z = latents(2, 175)
    torch.manual_seed(1234)
    old = ae.decode_overlapping(z)
    after_old = torch.randn(4)
    torch.manual_seed(1234)
    new = ae.decode_audio(z, chunked=True)
    assert rel(new, old) <= TOL
    assert torch.equal(torch.randn(4), after_old)


@torch.no_grad()
def test_every_latent_is_decoded_once_where_nothing_differs_between_chunks() -> None:
    """SAME-S without noise, boundaries on the attention-chunk grid: exactly the sequence, no overlap."""
    ae = tiny("same-s")
    calls, handle = count_decoder_latents(ae)
    try:
        ae.decode_audio(latents(1, 300), chunked=True, noise=False, chunks_per_pass=8)
        assert calls == [300]  # the overlapping chunks decode 3 * 128 = 384
        # With noise, the chunks' draws differ around each of the 2 boundaries: reach 3 latents of
        # context each way, rounded out to the 2-latent grid, 8 latents a boundary.
        calls.clear()
        ae.decode_audio(latents(1, 300), chunked=True, noise=True, chunks_per_pass=8)
        assert calls == [300 + 2 * 8]
        # A pass per chunk (the default): spans [0, 116), [108, 192), [184, 300), context at both
        # boundaries, with noise or without.
        for noise in (False, True):
            calls.clear()
            ae.decode_audio(latents(1, 300), chunked=True, noise=noise)
            assert calls == [116, 84, 116]
    finally:
        handle.remove()


@torch.no_grad()
def test_the_context_is_needed() -> None:
    """Without context at the boundaries (every latent decoded once with its own chunk's noise) the
    audio differs: a latent's neighbours' noise came from its own chunk in the overlapping decode."""
    ae = tiny("same-s")
    block = ae.decoder.layers[3]
    z = latents(1, 175)
    old = ae.decode_overlapping(z, rng=NoiseSource.per_item([3]))
    block.latent_reach = lambda: 0
    try:
        naive = ae.decode_audio(z, chunked=True, rng=NoiseSource.per_item([3]))
    finally:
        del block.latent_reach
    assert rel(naive, old) > 100 * TOL


@torch.no_grad()
def test_short_trims_keep_the_overlapping_decode() -> None:
    """An inner-edge trim shorter than the decoder's reach leaves edge effects in the kept audio:
    the overlapping chunks are decoded as before."""
    ae = tiny("same-s")
    calls, handle = count_decoder_latents(ae)
    try:
        ae.decode_audio(latents(1, 40), chunked=True, chunk_size=16, overlap=4, noise=False)
    finally:
        handle.remove()
    assert calls == [16] * len(chunk_starts(40, 16, 12))


def test_chunks_per_pass_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunks_per_pass=0 is invalid"):
        tiny("same-s").decode_audio(latents(1, 4), chunked=True, chunks_per_pass=0)


@pytest.mark.parametrize("frames,size,overlap,grid,reach", [
    (130, 128, 32, 2, 3), (175, 128, 32, 2, 3), (1292, 128, 32, 2, 3), (1292, 128, 32, 1, 12),
    (61, 16, 8, 2, 3), (61, 20, 9, 1, 4), (128, 128, 32, 2, 3),
])
@pytest.mark.parametrize("context_always,chunks_per_pass", [(True, 8), (False, 8), (False, 2)])
def test_decode_spans(frames: int, size: int, overlap: int, grid: int, reach: int, context_always: bool,
                      chunks_per_pass: int) -> None:
    starts = chunk_starts(frames, size, size - overlap)
    spans = decode_spans(starts, frames, size, overlap // 2, grid, reach, chunks_per_pass, context_always)
    assert spans[0][2] == 0 and spans[-1][3] == frames
    for i, (s, (lo, hi, keep_lo, keep_hi)) in enumerate(zip(starts, spans, strict=True)):
        assert s <= lo <= keep_lo < keep_hi <= hi <= s + size  # inside the chunk, around the kept span
        assert (lo - s) % grid == 0 and (hi - lo) % grid == 0  # on the chunk's attention-chunk grid
        if i:
            assert keep_lo == spans[i - 1][3]  # the kept spans tile the sequence
        # Context: `reach` latents on each inner side, or up to the chunk's own edge; always where
        # a pass begins or ends.
        if i and (context_always or lo < keep_lo or i % chunks_per_pass == 0):
            assert keep_lo - lo >= reach or lo == s
        if i < len(starts) - 1 and (context_always or hi > keep_hi or (i + 1) % chunks_per_pass == 0):
            assert hi - keep_hi >= reach or hi == s + size
