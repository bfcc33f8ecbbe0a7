"""SAME autoencoder (SAME-S and SAME-L): 44.1 kHz stereo <-> latents at 4096x downsampling.

Data flow: patching (256 samples x 2 channels -> 512 features) -> transformer resampling block
(16 patches + 1 learned token -> 1 latent) -> Linear -> SoftNorm bottleneck; the decoder mirrors it
(1 latent + 16 learned tokens -> 16 patches). SAME-S attends inside 34-token chunks with a midpoint
shift half way up the stack; SAME-L attends inside a +-17 token band over the whole sequence.

Random draws (bottleneck dither, decoder mask noise) come from torch's global generator in the
reference's order, so `torch.manual_seed(s)` reproduces the reference's decode. The chunked decode
makes every chunk's draws in that order too, but runs the decoder once over all the chunks' kept
spans (plus a few latents of context where needed) instead of once per overlapping chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import apply_rope, attention, check_backend, rope_angles, rope_table
from .noise import GLOBAL, NoiseSource

PI = 3.14159265359  # the literal the reference's sin(pi x) activation uses


class DyT(nn.Module):
    """Dynamic tanh normalisation: gamma * tanh(alpha * x) + beta."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 4.0))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.tanh(self.alpha * x) + self.beta


class WNConv1d(nn.Module):
    """Conv1d with legacy weight norm (weight = g * v / ||v||), keys weight_g / weight_v / bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size) * 0.02)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(1, 2), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding="same")


class GLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, sinusoidal: bool):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.sinusoidal = sinusoidal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        gate = torch.sin(PI * gate) if self.sinusoidal else F.silu(gate)
        return value * gate


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, sinusoidal: bool):
        super().__init__()
        inner = dim * mult
        # Index 1 is an identity so that the official keys ff.0.proj / ff.2 line up.
        self.ff = nn.Sequential(GLU(dim, inner, sinusoidal), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiffSelfAttention(nn.Module):
    """Differential self-attention: softmax(q k) v - softmax(q' k') v, DyT qk-norm, half RoPE."""

    def __init__(self, dim: int, dim_heads: int, differential: bool = True):
        super().__init__()
        self.heads = dim // dim_heads
        self.dim_heads = dim_heads
        self.differential = differential
        self.to_qkv = nn.Linear(dim, dim * (5 if differential else 3), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.q_norm = DyT(dim_heads)
        self.k_norm = DyT(dim_heads)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, window: tuple[int, int] | None,
                backend: str) -> torch.Tensor:
        b, n, _ = x.shape
        # Per-token (B, N, H, Dh) views in the order q, k, v[, q_diff, k_diff]; each is normed and
        # rotated where it lies, then seen as (B, H, N, Dh), so no kernel reorders the projection.
        q0, k0, v, *diff = self.to_qkv(x).unflatten(-1, (-1, self.heads, self.dim_heads)).unbind(2)
        rope = rope[:, :, None]  # broadcast over the heads
        v = v.transpose(1, 2)
        out = None
        for q, k in [(q0, k0), *([tuple(diff)] if diff else [])]:  # diff: [q_diff, k_diff] or []
            q = apply_rope(self.q_norm(q), rope).to(v.dtype).transpose(1, 2)
            k = apply_rope(self.k_norm(k), rope).to(v.dtype).transpose(1, 2)
            o = attention(q, k, v, window=window, backend=backend)
            out = o if out is None else out - o
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class SAMEBlock(nn.Module):
    """Pre-norm transformer block: x + attn(DyT(x)); x + FF(DyT(x)). No conditioning."""

    def __init__(self, dim: int, dim_heads: int, ff_mult: int, differential: bool, sinusoidal: bool):
        super().__init__()
        self.pre_norm = DyT(dim)
        self.self_attn = DiffSelfAttention(dim, dim_heads, differential)
        self.ff_norm = DyT(dim)
        self.ff = FeedForward(dim, ff_mult, sinusoidal)
        rope_dim = dim_heads // 2
        # On the CPU even inside a meta-device context (meta arithmetic costs seconds of imports).
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rope_dim, 2, device="cpu").float() / rope_dim))
        self.rope = nn.Module()
        self.rope.register_buffer("inv_freq", inv_freq)

    def rope_table(self, length: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The RoPE table `forward` takes, for tokens at `positions` (default 0..length-1). Apart
        from `forward` so that a compiled block reads it rather than recomputing it per element."""
        return rope_table(rope_angles(self.rope.inv_freq, length, positions), self.self_attn.dim_heads)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, window: tuple[int, int] | None,
                backend: str) -> torch.Tensor:
        """`rope`: `self.rope_table(...)` for x's tokens."""
        x = x + self.self_attn(self.pre_norm(x), rope, window, backend)
        return x + self.ff(self.ff_norm(x))


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Zero-pad `dim` at the end up to a multiple of `multiple`."""
    extra = (-x.shape[dim]) % multiple
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class ResamplingBlock(nn.Module):
    """Transformer resampling block: `stride` positions <-> 1 latent via learned tokens.

    Encoder: each group of `stride` patches gets one learned token appended; the token's output is
    the latent. Decoder: each latent gets `stride` learned tokens appended; their outputs are the
    patches. Sub-chunks of stride+1 tokens are the unit both attention patterns are built from.
    """

    def __init__(self, kind: str, in_channels: int, out_channels: int, stride: int, depth: int,
                 dim_heads: int, chunk_size: int = 128, chunk_midpoint_shift: bool = False,
                 sliding_window: list[int] | None = None, differential: bool = True, ff_mult: int = 3,
                 sinusoidal_blocks: int = 0, mask_noise: float = 0.0, conv_mapping: bool = False):
        super().__init__()
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind={kind!r}; allowed: 'encoder', 'decoder'")
        self.kind = kind
        self.stride = stride
        self.sub_chunk = stride + 1
        self.chunk_size = chunk_size
        self.midpoint_shift = chunk_midpoint_shift
        self.window = None if sliding_window is None else tuple(w * self.sub_chunk for w in sliding_window)
        self.mask_noise = mask_noise
        self.depth = depth
        dim = out_channels if kind == "encoder" else in_channels
        self.mapping = WNConv1d(in_channels, out_channels, 3 if conv_mapping else 1)
        self.new_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformers = nn.ModuleList(
            SAMEBlock(dim, dim_heads, ff_mult, differential, sinusoidal=(depth - i) < sinusoidal_blocks)
            for i in range(depth)
        )
        if self.window is None and chunk_size % stride:
            raise ValueError(f"chunk_size {chunk_size} must be a multiple of stride {stride}")
        # Chunked attention unit: chunk_size positions plus their learned tokens (34 for SAME-S).
        self.attn_chunk = chunk_size + chunk_size // stride

    def latent_grid(self) -> int:
        """Latents per attention chunk: a decode that starts at a multiple of it sees the same chunks."""
        return 1 if self.window is not None else self.chunk_size // self.stride

    def latent_reach(self) -> int:
        """Decoder: how far (in latents) an output latent's inputs and noise can lie from it.

        Band attention reaches `depth * window` tokens; chunked attention reaches the rest of a
        chunk per stage (two stages with the midpoint shift, latent-aligned when a chunk holds an
        even number of latents); a kernel-3 output conv adds one latent. SAME-S: 3, SAME-L: 12.
        """
        conv = self.mapping.weight_v.shape[-1] // 2
        if self.window is not None:
            return -(-self.depth * max(self.window) // self.sub_chunk) + conv
        grid = self.latent_grid()
        if not self.midpoint_shift:
            return grid - 1 + conv
        return 2 * (grid - 1 if grid % 2 == 0 else grid) + conv

    def _run_stack(self, x: torch.Tensor, backend: str, positions: torch.Tensor | None = None) -> torch.Tensor:
        if self.window is not None:
            for block in self.transformers:
                x = block(x, block.rope_table(x.shape[1], positions), self.window, backend)
            return x
        b = x.shape[0]
        c = self.attn_chunk
        split = self.depth // 2 if self.midpoint_shift else self.depth
        x = x.reshape(-1, c, x.shape[-1])
        for block in self.transformers[:split]:
            x = block(x, block.rope_table(c), None, backend)
        x = x.reshape(b, -1, x.shape[-1])
        if split == self.depth:
            return x
        # Second half: chunks shifted by half a chunk; the ends are padded with copies of
        # their own first / last half chunk (whole sub-chunks, original order).
        shift = c // 2
        x = torch.cat([x[:, :shift], x, x[:, -shift:]], dim=1).reshape(-1, c, x.shape[-1])
        for block in self.transformers[split:]:
            x = block(x, block.rope_table(c), None, backend)
        return x.reshape(b, -1, x.shape[-1])[:, shift:-shift]

    def forward(self, x: torch.Tensor, noise: bool = True, backend: str = "auto",
                rng: NoiseSource = GLOBAL, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`positions` (decoder, band attention): each latent's RoPE position (default 0..T-1)."""
        b = x.shape[0]
        if self.kind == "encoder":
            x = pad_to_multiple(x, self.chunk_size if self.window is None else self.stride, dim=-1)
            x = self.mapping(x)
        x = x.transpose(1, 2)  # (B, positions, D)
        d = x.shape[-1]
        if self.kind == "encoder":
            groups, group_len, new_count = x.shape[1] // self.stride, self.stride, 1
        else:
            if self.window is None:
                x = pad_to_multiple(x, self.chunk_size // self.stride, dim=1)
            groups, group_len, new_count = x.shape[1], 1, self.stride
        x = x.reshape(b * groups, group_len, d)
        tokens = self.new_tokens.expand(b * groups, new_count, d)
        if self.mask_noise > 0 and noise:
            tokens = tokens + rng.randn_like(tokens) * self.mask_noise
        x = torch.cat([x, tokens.to(x.dtype)], dim=1).reshape(b, groups * self.sub_chunk, d)
        if positions is not None:
            offsets = torch.arange(self.sub_chunk, device=positions.device)
            positions = (positions[:, None] * self.sub_chunk + offsets).flatten()
        x = self._run_stack(x, backend, positions)
        x = x.reshape(b, groups, self.sub_chunk, d)[:, :, -new_count:]
        x = x.reshape(b, groups * new_count, d).transpose(1, 2)
        if self.kind == "decoder":
            x = self.mapping(x)
        return x


class Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


def _block_kwargs(cfg: dict) -> dict:
    return dict(
        stride=cfg["strides"][0],
        depth=cfg["transformer_depths"][0],
        dim_heads=cfg["dim_heads"],
        chunk_size=cfg.get("chunk_size", 128),
        chunk_midpoint_shift=cfg.get("chunk_midpoint_shift", False),
        sliding_window=cfg.get("sliding_window"),
        differential=cfg.get("differential", True),
        ff_mult=cfg.get("ff_mult", 3),
        mask_noise=cfg.get("mask_noise", 0.0),
        conv_mapping=cfg.get("conv_mapping", False),
    )


def _check_same_config(cfg: dict, side: str) -> None:
    if len(cfg["c_mults"]) != 1 or len(cfg["strides"]) != 1:
        raise ValueError(f"{side}: only single-stage SAME configs are supported (c_mults {cfg['c_mults']})")
    if not cfg.get("dyt", True) or not cfg.get("variable_stride", True):
        raise ValueError(f"{side}: SAME configs with dyt=false or variable_stride=false are not supported")


class SAMEEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        _check_same_config(cfg, "encoder")
        width = cfg["channels"] * cfg["c_mults"][0]
        self.layers = nn.ModuleList([
            ResamplingBlock("encoder", cfg["in_channels"], width, **_block_kwargs(cfg)),
            Transpose(),
            nn.Linear(width, cfg["latent_dim"]),
            Transpose(),
        ])

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        x = self.layers[0](x, backend=backend)
        return self.layers[2](x.transpose(1, 2)).transpose(1, 2)


class SAMEDecoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        _check_same_config(cfg, "decoder")
        width = cfg["channels"] * cfg["c_mults"][0]
        sinusoidal = cfg.get("sinusoidal_blocks", [0])[0]
        self.layers = nn.ModuleList([
            Transpose(),
            nn.Linear(cfg["latent_dim"], width),
            Transpose(),
            ResamplingBlock("decoder", width, cfg["out_channels"], sinusoidal_blocks=sinusoidal,
                            **_block_kwargs(cfg)),
        ])

    def forward(self, z: torch.Tensor, noise: bool = True, backend: str = "auto",
                rng: NoiseSource = GLOBAL, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layers[1](z.transpose(1, 2)).transpose(1, 2)
        return self.layers[3](x, noise=noise, backend=backend, rng=rng, positions=positions)


class SoftNormBottleneck(nn.Module):
    """Per-channel affine then a global scale by the (frozen) running std of the latents."""

    def __init__(self, dim: int, noise_augment_dim: int = 0, noise_regularize: bool = False,
                 auto_scale: bool = True, **_: object):
        super().__init__()
        if noise_augment_dim:
            raise ValueError("softnorm bottleneck: noise_augment_dim > 0 is not supported")
        if not auto_scale:
            raise ValueError("softnorm bottleneck: auto_scale=false is not supported")
        self.scaling_factor = nn.Parameter(torch.ones(1, dim, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1))
        self.noise_scaling_factor = nn.Parameter(torch.ones(1, 0, 1))
        self.running_std = nn.Parameter(torch.ones(1), requires_grad=False)
        self.noise_regularize = noise_regularize

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scaling_factor + self.bias) / self.running_std

    def decode(self, z: torch.Tensor, noise: bool = True, rng: NoiseSource = GLOBAL) -> torch.Tensor:
        x = z * self.running_std
        if self.noise_regularize and noise:
            # A -60 dB dither the reference applies at inference too.
            x = x + rng.randn_like(x) * self.running_std * 1e-3
        return x


class SAMEAutoencoder(nn.Module):
    """Patching + SAME encoder/decoder + SoftNorm bottleneck, with the reference's chunking."""

    def __init__(self, cfg: dict, sample_rate: int = 44100):
        super().__init__()
        patched = cfg["pretransform"]
        if patched.get("type") != "patched":
            raise ValueError(f"unsupported autoencoder pretransform type {patched.get('type')!r}; expected 'patched'")
        for part in ("encoder", "decoder"):
            if cfg[part]["type"] != "same":
                raise ValueError(f"unsupported {part} type {cfg[part]['type']!r}; expected 'same'")
        if cfg["bottleneck"]["type"] != "softnorm":
            raise ValueError(f"unsupported bottleneck type {cfg['bottleneck']['type']!r}; expected 'softnorm'")
        self.patch_size = patched["config"]["patch_size"]
        self.audio_channels = patched["config"]["channels"]
        self.latent_dim = cfg["latent_dim"]
        self.downsampling_ratio = cfg["downsampling_ratio"]
        self.sample_rate = sample_rate
        self.encoder = SAMEEncoder(cfg["encoder"]["config"])
        self.decoder = SAMEDecoder(cfg["decoder"]["config"])
        self.bottleneck = SoftNormBottleneck(**cfg["bottleneck"]["config"])
        self.attention_backend = "auto"

    def decoder_blocks(self) -> list[SAMEBlock]:
        """The decoder's transformer blocks (what the int8 tiers convert and `compile` compiles)."""
        return [block for layer in self.decoder.layers for block in getattr(layer, "transformers", ())]

    def set_attention_backend(self, backend: str | None) -> None:
        self.attention_backend = check_backend(backend)

    # -- one pass ---------------------------------------------------------------------------
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, N) audio at the model rate -> (B, latent_dim, T) latents, in one pass."""
        x = pad_to_multiple(audio, self.patch_size, dim=-1)
        b, c, _ = x.shape
        x = x.reshape(b, c, -1, self.patch_size).permute(0, 1, 3, 2).reshape(b, c * self.patch_size, -1)
        x = self.encoder(x, backend=self.attention_backend)
        return self.bottleneck.encode(x)

    def decode(self, latents: torch.Tensor, noise: bool = True, rng: NoiseSource = GLOBAL,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim, T) -> (B, C, T' * 4096) audio in one pass (T' = T, or even for SAME-S).

        `positions` (SAME-L): each latent's RoPE position, default 0..T-1.
        """
        x = self.bottleneck.decode(latents, noise=noise, rng=rng)
        x = self.decoder(x, noise=noise, backend=self.attention_backend, rng=rng, positions=positions)
        b, _, length = x.shape
        x = x.reshape(b, self.audio_channels, self.patch_size, length).permute(0, 1, 3, 2)
        return x.reshape(b, self.audio_channels, length * self.patch_size)

    # -- chunked ----------------------------------------------------------------------------
    def encode_audio(self, audio: torch.Tensor, chunked: bool = False, chunk_size: int = 128,
                     overlap: int = 32) -> torch.Tensor:
        """Encode, optionally in overlapping chunks (sizes in latents) stitched by hard cuts."""
        hop = self.downsampling_ratio
        total = audio.shape[-1]
        if not chunked or total < chunk_size * hop:
            return self.encode(audio)
        starts = chunk_starts(total, chunk_size * hop, (chunk_size - overlap) * hop)
        chunks = [self.encode(audio[..., s : s + chunk_size * hop]) for s in starts]
        out_starts = [s // hop for s in starts[:-1]] + [total // hop - chunk_size]
        return stitch(chunks, out_starts, total // hop, chunk_size, overlap // 2)

    def decode_audio(self, latents: torch.Tensor, chunked: bool = False, chunk_size: int = 128,
                     overlap: int = 32, noise: bool = True, rng: NoiseSource = GLOBAL,
                     chunks_per_pass: int = 1,
                     on_chunk: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor:
        """Decode, optionally in chunks of `chunk_size` latents overlapping by `overlap`.

        The result is that of `decode_overlapping` (every chunk decoded on its own, with its own
        draws in chunk order, stitched by hard cuts), but each latent is decoded about once: the
        decoder's reach is far shorter than the trim at a chunk's inner edge, so decoding the
        chunks' kept spans side by side in one pass, each with its own chunk's draws, gives the
        same audio. A span carries `latent_reach` latents of extra context on a side whose
        neighbour was decoded differently (other draws, another attention-chunk grid, other RoPE
        positions, another pass): 8 latents a boundary for SAME-S with noise (none without), 24
        for SAME-L. A pass holds at most `chunks_per_pass` chunks, so memory stays bounded
        however long the audio. One chunk per pass is the fastest measured on the CPU (int8 +
        compile, 2-core EPYC: 1.35x at 388 latents and 1.45x at 1357 against 8 per pass; 1 and 2
        within noise of each other): a pass's activations stay small enough for the allocator to
        reuse instead of mapping and zeroing fresh pages every block. Where a trim is shorter
        than the reach, chunk edges show in the kept audio and the overlapping chunks are decoded
        as before.

        `on_chunk(audio, start_sample)` receives each stretch as soon as it is final (after each
        pass; the whole audio at once when not chunked), in order, so a caller can stream it.
        """
        if chunks_per_pass < 1:
            raise ValueError(f"chunks_per_pass={chunks_per_pass} is invalid; a positive integer")
        total = latents.shape[-1]
        def whole(audio: torch.Tensor) -> torch.Tensor:
            if on_chunk is not None:
                on_chunk(audio, 0)
            return audio

        if not chunked or total < chunk_size:
            return whole(self.decode(latents, noise=noise, rng=rng))
        block = self.decoder.layers[3]
        grid, reach = block.latent_grid(), block.latent_reach()
        if chunk_size % grid or overlap // 2 < reach:
            return whole(self.decode_overlapping(latents, chunk_size, overlap, noise, rng))
        starts = chunk_starts(total, chunk_size, chunk_size - overlap)
        dither = noise and self.bottleneck.noise_regularize
        mask = noise and block.mask_noise > 0
        spans = decode_spans(starts, total, chunk_size, overlap // 2, grid, reach, chunks_per_pass,
                             context_always=dither or mask or block.window is not None)
        b, device, hop = latents.shape[0], latents.device, self.downsampling_ratio
        chunks, kept = list(zip(starts, spans, strict=True)), []
        for first in range(0, len(chunks), chunks_per_pass):
            group = chunks[first : first + chunks_per_pass]
            index, positions, dithers, masks = [], [], [], []
            for s, (lo, hi, _, _) in group:
                # This chunk's draws, exactly as decode() makes them for latents[..., s : s + chunk_size].
                if dither:
                    drawn = rng.randn_like(latents[..., s : s + chunk_size] * self.bottleneck.running_std)
                    dithers.append(drawn[..., lo - s : hi - s])
                if mask:
                    tokens = block.new_tokens.expand(b * chunk_size, block.stride, block.new_tokens.shape[-1])
                    masks.append(rng.randn_like(tokens).unflatten(0, (b, chunk_size))[:, lo - s : hi - s])
                index.append(torch.arange(lo, hi, device=device))
                positions.append(torch.arange(lo - s, hi - s, device=device))
            draws = [torch.cat(dithers, dim=-1)] if dither else []
            if mask:
                draws.append(torch.cat(masks, dim=1).flatten(0, 1))
            audio = self.decode(latents[..., torch.cat(index)], noise=noise, rng=ReplayNoise(draws),
                                positions=torch.cat(positions))
            offset, done = 0, len(kept)
            for _, (lo, hi, keep_lo, keep_hi) in group:
                kept.append(audio[..., (offset + keep_lo - lo) * hop : (offset + keep_hi - lo) * hop])
                offset += hi - lo
            if on_chunk is not None:
                on_chunk(torch.cat(kept[done:], dim=-1), sum(k.shape[-1] for k in kept[:done]))
        return torch.cat(kept, dim=-1)

    def decode_overlapping(self, latents: torch.Tensor, chunk_size: int = 128, overlap: int = 32,
                           noise: bool = True, rng: NoiseSource = GLOBAL) -> torch.Tensor:
        """The reference's chunked decode: one decoder pass per overlapping chunk, hard-cut stitched."""
        total = latents.shape[-1]
        if total < chunk_size:
            return self.decode(latents, noise=noise, rng=rng)
        starts = chunk_starts(total, chunk_size, chunk_size - overlap)
        chunks = [self.decode(latents[..., s : s + chunk_size], noise=noise, rng=rng) for s in starts]
        hop = self.downsampling_ratio
        out_starts = [s * hop for s in starts]
        return stitch(chunks, out_starts, total * hop, chunk_size * hop, (overlap // 2) * hop)


class ReplayNoise(NoiseSource):
    """Hands out pre-drawn tensors, in order, in place of new draws of the same shapes."""

    def __init__(self, draws: list[torch.Tensor]):
        super().__init__()
        self.draws = list(draws)

    def randn(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not self.draws or tuple(self.draws[0].shape) != tuple(shape):
            raise RuntimeError(f"replayed noise does not match the draw of shape {tuple(shape)}")
        return self.draws.pop(0).to(device=device, dtype=dtype)


def decode_spans(starts: list[int], total: int, size: int, trim: int, grid: int, reach: int,
                 chunks_per_pass: int, context_always: bool) -> list[tuple[int, int, int, int]]:
    """Per chunk (lo, hi, keep_lo, keep_hi): decode latents [lo, hi), keep [keep_lo, keep_hi).

    The kept spans are what `stitch` keeps of each chunk (it writes [start + trim, start + size -
    trim), the ends untrimmed; later chunks overwrite earlier ones); together they tile [0, total).
    At a boundary the decoded spans overlap by `reach` latents of context each way, rounded out to
    the chunk's attention grid, unless neither side needs it: `context_always` false, both chunks
    in the same pass (chunks i and i + 1 are unless i + 1 is a multiple of `chunks_per_pass`) and
    the boundary on both chunks' grids; there the spans simply abut and the pass sees the plain
    sequence. Spans never leave their chunk, so context cut short is the chunk's own edge, as before.
    """
    last = len(starts) - 1
    keep_lo = [s + (0 if i == 0 else trim) for i, s in enumerate(starts)]
    keep_hi = [min(s + (size if i == last else size - trim), keep_lo[i + 1] if i < last else total)
               for i, s in enumerate(starts)]
    if any(keep_hi[i] != keep_lo[i + 1] for i in range(last)) or keep_hi[last] != total:
        raise AssertionError(f"chunks {starts} do not tile {total} latents")

    def plain(edge: int, left: int) -> bool:  # the boundary between chunks `left` and `left + 1`
        return (not context_always and (left + 1) % chunks_per_pass != 0
                and (edge - starts[left]) % grid == 0 and (edge - starts[left + 1]) % grid == 0)

    spans = []
    for i, s in enumerate(starts):
        lo, hi = s, s + size
        if i > 0:
            context = 0 if plain(keep_lo[i], i - 1) else reach
            lo = s + max(0, (keep_lo[i] - context - s) // grid * grid)
        if i < last:
            context = 0 if plain(keep_hi[i], i) else reach
            hi = s + min(size, -(-(keep_hi[i] + context - s) // grid) * grid)
        spans.append((lo, hi, keep_lo[i], keep_hi[i]))
    return spans


def chunk_starts(total: int, size: int, hop: int) -> list[int]:
    """Chunk offsets 0, hop, 2*hop, ...; the last chunk is anchored to the end."""
    if hop <= 0:
        raise ValueError(f"overlap must be smaller than chunk_size (hop {hop})")
    starts = list(range(0, total - size + 1, hop))
    if starts[-1] != total - size:
        starts.append(total - size)
    return starts


def stitch(chunks: list[torch.Tensor], starts: list[int], total: int, size: int, trim: int) -> torch.Tensor:
    """Hard-cut stitching: drop `trim` from every inner edge; later chunks overwrite earlier ones."""
    out = chunks[0].new_zeros(*chunks[0].shape[:-1], total)
    last = len(chunks) - 1
    for i, (start, chunk) in enumerate(zip(starts, chunks, strict=True)):
        if i == last:
            start = total - size
        left = 0 if i == 0 else trim
        right = size if i == last else size - trim
        out[..., start + left : start + right] = chunk[..., left:right]
    return out
