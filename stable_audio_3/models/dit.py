"""The Stable Audio 3 diffusion transformer (DiT): latents + conditioning -> rectified-flow velocity.

small: 1024 wide, 20 blocks, plain attention. medium: 1536 wide, 24 blocks, differential attention
(softmax(q k) v - softmax(q' k') v) in self- and cross-attention. Each block is adaLN-modulated by the
timestep + seconds embedding, cross-attends to the prompt tokens (+ the seconds token), and adds a
per-block projection of the inpainting input ("local-add" conditioning) to its residual stream.

Padded latents (past the requested duration) are handled in one of two ways (`attention_padding`):

- "exclude" (the training semantics, the reference with flash-attn): padded latents are no keys in
  self-attention, and their self-attention and feed-forward updates are exactly 0. They still get
  cross-attention and local-add conditioning; no valid output depends on them.
- "zero-values" (the reference without flash-attn, i.e. on CPU / MPS): padded keys keep their share
  of the softmax with zeroed values; padded queries attend and get the feed-forward as usual.

Module names equal the official checkpoint's keys after the `model.model.` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import apply_rope, attention, check_backend, dense_attention_math, rope_angles, rope_table
from .fourier import expo_fourier_features, frequencies_on
from .same import FeedForward

ATTENTION_PADDING = ("exclude", "zero-values")


def check_attention_padding(value: str) -> str:
    if value not in ATTENTION_PADDING:
        raise ValueError(f"attention_padding={value!r} is invalid; allowed: {', '.join(map(repr, ATTENTION_PADDING))}")
    return value


def mlp(dim_in: int, dim: int, dim_out: int | None = None, bias: bool = True) -> nn.Sequential:
    """Linear, SiLU, Linear: keys `.0` and `.2`."""
    return nn.Sequential(nn.Linear(dim_in, dim, bias=bias), nn.SiLU(), nn.Linear(dim, dim_out or dim, bias=bias))


class RMSNorm(nn.Module):
    """x / rms(x) * gamma, no beta. `force_fp32` computes in float32 for half-precision models."""

    def __init__(self, dim: int, eps: float = 1e-5, force_fp32: bool = False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.force_fp32 = force_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.force_fp32:
            return F.rms_norm(x.float(), x.shape[-1:], self.gamma.float(), self.eps).to(x.dtype)
        return F.rms_norm(x, x.shape[-1:], self.gamma, self.eps)


class RotaryEmbedding(nn.Module):
    """NeoX RoPE tables; `inv_freq` is a persistent buffer (it is in the checkpoint)."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        # Built on the CPU even inside a meta-device context: meta arithmetic costs seconds of imports.
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)))

    def angles(self, length: int) -> torch.Tensor:
        return rope_angles(self.inv_freq, length)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, backend: str
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, N, D); `key_mask` (B, 1, 1, N) hides keys."""
    if key_mask is None:
        return attention(q, k, v, backend=backend)
    if backend == "math":
        return dense_attention_math(q, k, v, key_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


class Attention(nn.Module):
    """Multi-head self- or cross-attention with RMS qk-norm; optionally differential.

    Self-attention projects q, k, v (and q', k') from one fused `to_qkv`; cross-attention projects
    q (q') from x and k (k'), v from the context. The differential variant shares v.
    """

    def __init__(self, dim: int, dim_heads: int, cross: bool, differential: bool, qk_norm_eps: float = 1e-6):
        super().__init__()
        self.heads = dim // dim_heads
        self.dim_heads = dim_heads
        self.cross = cross
        self.differential = differential
        if cross:
            self.to_q = nn.Linear(dim, dim * (2 if differential else 1), bias=False)
            self.to_kv = nn.Linear(dim, dim * (3 if differential else 2), bias=False)
        else:
            self.to_qkv = nn.Linear(dim, dim * (5 if differential else 3), bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(dim_heads, eps=qk_norm_eps)
        self.k_norm = RMSNorm(dim_heads, eps=qk_norm_eps)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.dim_heads)).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        value_mask: torch.Tensor | None = None,
        backend: str = "auto",
        context_kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, N, E) -> (B, N, E). `rope` (a `rope_table`) rotates q and k; `key_mask` (B, 1, 1, N)
        hides keys; `value_mask` (B, 1, N, 1) multiplies the values (the "zero-values" padding);
        `context_kv` is to_kv(context) when the caller already has it."""
        # Chunk orders of the checkpoints: q, k, v[, q', k'] (self); q[, q'] and k[, k'], v (cross).
        if self.cross:
            qs = self.to_q(x).chunk(2 if self.differential else 1, dim=-1)
            kv = self.to_kv(context) if context_kv is None else context_kv
            *ks, v = kv.chunk(3 if self.differential else 2, dim=-1)
        elif self.differential:
            q, k, v, q_diff, k_diff = self.to_qkv(x).chunk(5, dim=-1)
            qs, ks = (q, q_diff), (k, k_diff)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            qs, ks = (q,), (k,)
        v = self._split_heads(v)
        if value_mask is not None:
            v = v * value_mask.to(v.dtype)
        out = None
        for q, k in zip(qs, ks, strict=True):
            q = self.q_norm(self._split_heads(q)).to(v.dtype)
            k = self.k_norm(self._split_heads(k)).to(v.dtype)
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)  # keeps their dtype, v's
            o = _attend(q, k, v, key_mask, backend)
            out = o if out is None else out - o
        return self.to_out(out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """adaLN self-attention, cross-attention, local-add conditioning, adaLN GLU feed-forward."""

    def __init__(
        self,
        dim: int,
        dim_heads: int,
        local_add_cond_dim: int,
        differential: bool,
        ff_mult: int,
        norm_eps: float,
        norm_fp32: bool,
        qk_norm_eps: float,
    ):
        super().__init__()
        self.pre_norm = RMSNorm(dim, norm_eps, norm_fp32)
        self.self_attn = Attention(dim, dim_heads, cross=False, differential=differential, qk_norm_eps=qk_norm_eps)
        self.cross_attend_norm = RMSNorm(dim, norm_eps, norm_fp32)
        self.cross_attn = Attention(dim, dim_heads, cross=True, differential=differential, qk_norm_eps=qk_norm_eps)
        self.ff_norm = RMSNorm(dim, norm_eps, norm_fp32)
        self.ff = FeedForward(dim, ff_mult, sinusoidal=False)
        self.to_scale_shift_gate = nn.Parameter(torch.zeros(6 * dim))
        self.to_local_embed = mlp(local_add_cond_dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        context_kv: torch.Tensor,
        local: torch.Tensor | None,
        rope: torch.Tensor,
        padding: Padding,
        backend: str,
    ) -> torch.Tensor:
        """x (B, N, E); modulation (B, 6E) from the global embedding; `context_kv` this block's
        cross-attention keys/values and `local` its local-add embedding (both step-invariant, see
        `DiffusionTransformer.prepare`); `rope` the `rope_table` of all N positions; `padding` says
        which tokens get self-attention and feed-forward updates."""
        scale_sa, shift_sa, gate_sa, scale_ff, shift_ff, gate_ff = (
            (self.to_scale_shift_gate + modulation).unsqueeze(1).chunk(6, dim=-1)
        )
        n = padding.active
        # The gate enters as sigmoid(1 - gate), as the checkpoints were trained.
        h = self.pre_norm(x[:, :n]) * (1 + scale_sa) + shift_sa
        h = self.self_attn(h, rope=rope[:, :n], key_mask=padding.key_mask, value_mask=padding.value_mask,
                           backend=backend)
        x = padding.add_update(x, h * torch.sigmoid(1 - gate_sa))

        x = x + self.cross_attn(self.cross_attend_norm(x), context_kv=context_kv, backend=backend)

        if local is not None:
            x = x + align_right(local, x.shape[1])

        h = self.ff(self.ff_norm(x[:, :n]) * (1 + scale_ff) + shift_ff)
        return padding.add_update(x, h * torch.sigmoid(1 - gate_ff))


class Padding:
    """Which tokens get self-attention and feed-forward updates, fixed for a whole sampling run.

    "exclude": padded tokens are no keys and get no update, so only the first `active` tokens (the
    memory tokens and the longest item's valid latents) are computed at all; a key mask is needed
    only when items of the batch differ in length. "zero-values": every token is computed, padded
    values are zeroed. Built from lengths known on the host (`from_lengths`), it costs the step no
    device synchronisation.
    """

    def __init__(self, length: int, active: int | None = None, valid: torch.Tensor | None = None,
                 key_mask: torch.Tensor | None = None, value_mask: torch.Tensor | None = None):
        self.length, self.active = length, length if active is None else active
        self.valid, self.key_mask, self.value_mask = valid, key_mask, value_mask

    @classmethod
    def from_lengths(cls, lengths: list[int], length: int, num_memory: int, exclude: bool,
                     device: torch.device | str, real_length: int | None = None,
                     bucket: Callable[[int], int] | None = None) -> Padding:
        """Items whose first lengths[b] latents are valid, after `num_memory` always-valid tokens;
        `length` counts all tokens (memory included). Reads nothing from the device.

        A compiled step runs at a bucketed length so that a new duration reuses its graph: then
        only the first `real_length` tokens exist for the request, and `bucket` rounds the number of
        computed latents up. The extra tokens are no keys and get no update, exactly like padding,
        so the audio does not change."""
        real_length = length if real_length is None else real_length
        total = [num_memory + n for n in lengths]
        if bucket is None and all(n == length for n in total):
            return cls(length)
        valid = torch.arange(length, device=device)[None, :] < torch.tensor(total, device=device)[:, None]
        if bucket is None:
            return cls._from_valid(valid, exclude, length, max(total), all(n == total[0] for n in total))
        if exclude:
            active = min(length, num_memory + bucket(max(lengths)))
            return cls._from_valid(valid, exclude, length, active, False)
        real = torch.arange(length, device=device) < real_length  # zero-values: the tail is no key either
        return cls(length, key_mask=real[None, None, None, :], value_mask=valid[:, None, :, None])

    @classmethod
    def from_mask(cls, valid: torch.Tensor | None, exclude: bool, length: int) -> Padding:
        """From any (B, N) validity mask; reads it on the host (a sync), so not for the sampling loop."""
        if valid is None:
            return cls(length)
        positions = torch.arange(1, length + 1, device=valid.device)
        active = int((valid * positions).amax()) if exclude else length  # one past the last valid token
        return cls._from_valid(valid, exclude, length, active, exclude and bool(valid[:, :active].all()))

    @classmethod
    def _from_valid(cls, valid: torch.Tensor, exclude: bool, length: int, active: int, all_valid: bool) -> Padding:
        """"exclude" computes the first `active` tokens, with a key mask unless they are all valid;
        "zero-values" computes every token and zeroes the padded values."""
        if not exclude:
            return cls(length, value_mask=valid[:, None, :, None])
        if all_valid:
            return cls(length, active)
        active_valid = valid[:, :active]
        return cls(length, active, active_valid[..., None], active_valid[:, None, None, :])

    def add_update(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """x + update on the active tokens (masked to the valid ones); the rest unchanged."""
        if self.valid is not None:
            update = torch.where(self.valid, update, torch.zeros_like(update))
        if self.active == x.shape[1]:
            return x + update
        return torch.cat([x[:, : self.active] + update, x[:, self.active :]], dim=1)


def align_right(emb: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad with zeros (or cut from the left) to `length` tokens, so `emb` covers the last ones."""
    n = emb.shape[1]
    return F.pad(emb, (0, 0, length - n, 0)) if n < length else emb[:, n - length :]


class ContinuousTransformer(nn.Module):
    """project_in -> [memory tokens, latents] -> blocks -> drop memory tokens -> project_out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_heads: int,
        dim_in: int,
        dim_out: int,
        num_memory_tokens: int,
        local_add_cond_dim: int,
        differential: bool,
        ff_mult: int,
        norm_eps: float,
        norm_fp32: bool,
        qk_norm_eps: float,
    ):
        super().__init__()
        self.project_in = nn.Linear(dim_in, dim, bias=False)
        self.project_out = nn.Linear(dim, dim_out, bias=False)
        self.rotary_pos_emb = RotaryEmbedding(max(dim_heads // 2, 32))
        self.dim_heads = dim_heads
        self.num_memory_tokens = num_memory_tokens
        if num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.zeros(num_memory_tokens, dim))
        self.global_cond_embedder = mlp(dim, dim, 6 * dim)
        self.layers = nn.ModuleList(
            TransformerBlock(
                dim, dim_heads, local_add_cond_dim, differential, ff_mult, norm_eps, norm_fp32, qk_norm_eps
            )
            for _ in range(depth)
        )

    def forward(
        self,
        x: torch.Tensor,
        global_embed: torch.Tensor,
        context_kv: list[torch.Tensor],
        local: list[torch.Tensor | None],
        padding: Padding,
        backend: str,
    ) -> torch.Tensor:
        """x (B, T, C_in), global_embed (B, E), per-block cross keys/values and local embeddings
        -> (B, T, C_out)."""
        b = x.shape[0]
        x = self.project_in(x)
        if self.num_memory_tokens > 0:
            x = torch.cat([self.memory_tokens.expand(b, -1, -1), x], dim=1)
        # Memory tokens take positions 0..M-1.
        rope = rope_table(self.rotary_pos_emb.angles(x.shape[1]), self.dim_heads)
        modulation = self.global_cond_embedder(global_embed)
        for layer, kv, loc in zip(self.layers, context_kv, local, strict=True):
            x = layer(x, modulation, kv, loc, rope, padding, backend)
        return self.project_out(x[:, self.num_memory_tokens :])


# Settings every SA3 model has, and the only ones implemented (absent = this default).
_FIXED = {
    "patch_size": 1,
    "transformer_type": "continuous_transformer",
    "global_cond_type": "adaLN",
    "timestep_features_type": "expo",
    "timestep_features_logsnr": False,
    "norm_type": "rms_norm",
    "project_cond_tokens": True,
    "project_global_cond": True,
}
_REQUIRED = (
    "io_channels",
    "embed_dim",
    "depth",
    "num_heads",
    "cond_token_dim",
    "global_cond_dim",
    "local_add_cond_dim",
    "num_memory_tokens",
)


class DiffusionTransformer(nn.Module):
    """The SA3 DiT: latents + conditioning -> velocity. Guidance wraps it from outside (`guidance`)."""

    def __init__(
        self,
        io_channels: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        cond_token_dim: int,
        global_cond_dim: int,
        local_add_cond_dim: int,
        num_memory_tokens: int,
        differential: bool = False,
        ff_mult: int = 4,
        norm_eps: float = 1e-5,
        norm_fp32: bool = True,
        qk_norm_eps: float = 1e-6,
        timestep_features_dim: int = 256,
    ):
        super().__init__()
        self.io_channels = io_channels
        self.timestep_features_dim = timestep_features_dim
        self.attention_backend = "auto"
        self.to_timestep_embed = mlp(timestep_features_dim, embed_dim)
        self.to_cond_embed = mlp(cond_token_dim, embed_dim, bias=False)
        self.to_global_embed = mlp(global_cond_dim, embed_dim, bias=False)
        self.transformer = ContinuousTransformer(
            dim=embed_dim,
            depth=depth,
            dim_heads=embed_dim // num_heads,
            dim_in=io_channels,
            dim_out=io_channels,
            num_memory_tokens=num_memory_tokens,
            local_add_cond_dim=local_add_cond_dim,
            differential=differential,
            ff_mult=ff_mult,
            norm_eps=norm_eps,
            norm_fp32=norm_fp32,
            qk_norm_eps=qk_norm_eps,
        )
        self.preprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)

    @classmethod
    def from_config(cls, cfg: dict) -> DiffusionTransformer:
        """From the `model.diffusion.config` section of a model_config.json; unknown settings are errors."""
        cfg = dict(cfg)
        missing = [k for k in _REQUIRED if k not in cfg]
        if missing:
            raise ValueError(f"DiT config lacks {', '.join(missing)}")
        for key, supported in _FIXED.items():
            value = cfg.pop(key, supported)
            if value != supported:
                raise ValueError(f"DiT config {key}={value!r} is not supported; only {supported!r}")
        attn = dict(cfg.pop("attn_kwargs", {}))
        norm = dict(cfg.pop("norm_kwargs", {}))
        ff = dict(cfg.pop("ff_kwargs", {}))
        qk_norm = attn.pop("qk_norm", "none")
        if qk_norm != "rms":
            raise ValueError(f"DiT config attn_kwargs.qk_norm={qk_norm!r} is not supported; only 'rms'")
        model = cls(
            **{k: cfg.pop(k) for k in _REQUIRED},
            differential=bool(attn.pop("differential", False)),
            ff_mult=ff.pop("mult", 4),
            norm_eps=norm.pop("eps", 1e-5),
            norm_fp32=bool(norm.pop("force_fp32", False)),
            qk_norm_eps=attn.pop("qk_norm_eps", 1e-6),
            timestep_features_dim=cfg.pop("timestep_features_dim", 256),
        )
        leftover = dict(cfg)
        for name, section in (("attn_kwargs", attn), ("norm_kwargs", norm), ("ff_kwargs", ff)):
            leftover.update({f"{name}.{k}": v for k, v in section.items()})
        if leftover:
            raise ValueError(f"DiT config has settings this implementation does not support: {leftover}")
        return model

    def set_attention_backend(self, backend: str | None) -> None:
        """'auto' (flash-attn for unmasked attention on CUDA half when installed, else SDPA), 'sdpa',
        'flash', or 'math' (explicit softmax; the test oracle)."""
        self.attention_backend = check_backend(backend)

    @property
    def dtype(self) -> torch.dtype:
        return self.to_cond_embed[0].weight.dtype

    def prepare(
        self,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None = None,
    ) -> PreparedConditioning:
        """The projections that do not change between sampling steps, computed once per run: the
        prompt tokens, each block's cross-attention keys/values and local-add embedding, and the
        global embedding's conditioning part. cross_attn_cond (B, S, 768), global_cond (B, 768),
        local_add_cond (B, C+1, T)."""
        dtype = self.dtype
        context = self.to_cond_embed(cross_attn_cond.to(dtype))
        layers = self.transformer.layers
        kv = [layer.cross_attn.to_kv(context) for layer in layers]
        local = [None] * len(layers)
        if local_add_cond is not None:
            tokens = local_add_cond.to(dtype).transpose(1, 2)
            local = [layer.to_local_embed(tokens) for layer in layers]
        frequencies = frequencies_on(self.timestep_features_dim, global_cond.device)
        return PreparedConditioning(self.to_global_embed(global_cond.to(dtype)), kv, local, frequencies)

    def padding(self, lengths: list[int], latent_length: int, attention_padding: str,
                device: torch.device | str, real_length: int | None = None,
                bucket: Callable[[int], int] | None = None) -> Padding:
        """The run's `Padding` for items with `lengths` valid latents out of `latent_length` (host
        data); `real_length` and `bucket` for a bucketed compiled step (see `Padding.from_lengths`)."""
        exclude = check_attention_padding(attention_padding) == "exclude"
        memory = self.transformer.num_memory_tokens
        real = None if real_length is None else memory + real_length
        return Padding.from_lengths(lengths, memory + latent_length, memory, exclude, device, real, bucket)

    def step_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: PreparedConditioning,
                      padding: Padding) -> torch.Tensor:
        """One pass with prepared conditioning: x (B, C, T), t (B,) -> velocity (B, C, T). No host
        synchronisation and no branching on tensor values, so it compiles whole."""
        dtype = self.dtype
        x = x.to(dtype)
        # t is rounded to the timestep path's dtype before the features: the model dtype, as the
        # checkpoints saw it, except where a precision tier keeps that path in float32 (bfloat16).
        t_dtype = self.to_timestep_embed[0].weight.dtype
        features = expo_fourier_features(t.to(t_dtype), self.timestep_features_dim, frequencies=cond.frequencies)
        global_embed = cond.global_embed + self.to_timestep_embed(features).to(dtype)
        x = self.preprocess_conv(x) + x
        out = self.transformer(x.transpose(1, 2), global_embed, cond.context_kv, cond.local, padding,
                               self.attention_backend)
        out = out.transpose(1, 2)
        return self.postprocess_conv(out) + out

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        attention_padding: str = "exclude",
    ) -> torch.Tensor:
        """One unguided pass. x (B, C, T), t (B,), cross_attn_cond (B, S, 768), global_cond (B, 768),
        local_add_cond (B, C+1, T), padding_mask (B, T) bool (True = valid) -> velocity (B, C, T).
        Prepares the conditioning on every call (training, tests); sampling uses `prepare` once."""
        exclude = check_attention_padding(attention_padding) == "exclude"
        valid = None
        if padding_mask is not None:  # memory tokens are always valid
            memory = padding_mask.new_ones(x.shape[0], self.transformer.num_memory_tokens, dtype=torch.bool)
            valid = torch.cat([memory, padding_mask.bool()], dim=1)
        padding = Padding.from_mask(valid, exclude, self.transformer.num_memory_tokens + x.shape[-1])
        return self.step_velocity(x, t, self.prepare(cross_attn_cond, global_cond, local_add_cond), padding)

    forward = velocity


@dataclass
class PreparedConditioning:
    """Step-invariant DiT inputs of one run (see `DiffusionTransformer.prepare`)."""

    global_embed: torch.Tensor
    context_kv: list[torch.Tensor]
    local: list[torch.Tensor | None]
    frequencies: torch.Tensor  # of the timestep features
