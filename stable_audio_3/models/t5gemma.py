"""The encoder half of T5Gemma, the text encoder that Stable Audio 3 conditions on.

A small native PyTorch port of what `transformers`' `T5GemmaEncoderModel` computes, so that the
project needs no `transformers`. Architecture (Gemma-2 style, bidirectional):

    x = embed(ids) * sqrt(hidden)
    for each layer:
        x = x + post_attn_norm(self_attn(pre_attn_norm(x)))
        x = x + post_ff_norm(mlp(pre_ff_norm(x)))
    out = norm(x)

Every hyper-parameter comes from the HF `config.json` of the checkpoint folder. The state-dict keys
equal the HF ones after stripping `model.encoder.`. Operations follow the HF eager path op for op
(same casts, same order), so a bf16 checkpoint computes in bf16 exactly as the reference does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import ModelLoadError, SafetensorsFile, load_part

ENCODER_PREFIX = "model.encoder."
# Tensors of the full encoder-decoder checkpoint that an encoder never uses (skipped by name).
UNUSED_PREFIXES = ("model.decoder.", "lm_head.")


@dataclass
class T5GemmaEncoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    query_pre_attn_scalar: float
    attn_logit_softcapping: float | None
    rms_norm_eps: float
    rope_theta: float
    sliding_window: int | None
    layer_types: list[str]
    hidden_activation: str = "gelu_pytorch_tanh"

    @classmethod
    def from_hf(cls, cfg: dict) -> T5GemmaEncoderConfig:
        """From an HF T5Gemma `config.json` (the encoder-decoder one with an "encoder" section, or a flat one)."""
        enc = cfg.get("encoder", cfg)
        rope = enc.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"T5Gemma config: rope_type {rope_type!r} is not supported (only 'default')")
        n_layers = enc["num_hidden_layers"]
        # Gemma-2 convention when the config predates `layer_types`: sliding, full, sliding, ...
        layer_types = enc.get("layer_types") or [
            "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)
        ]
        if len(layer_types) != n_layers:
            raise ValueError(f"T5Gemma config: {len(layer_types)} layer_types for {n_layers} layers")
        activation = enc.get("hidden_activation", "gelu_pytorch_tanh")
        if activation != "gelu_pytorch_tanh":
            raise ValueError(f"T5Gemma config: hidden_activation {activation!r} is not supported")
        n_heads = enc["num_attention_heads"]
        return cls(
            vocab_size=enc["vocab_size"],
            hidden_size=enc["hidden_size"],
            intermediate_size=enc["intermediate_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=enc.get("num_key_value_heads", n_heads),
            head_dim=enc.get("head_dim", enc["hidden_size"] // n_heads),
            query_pre_attn_scalar=enc.get("query_pre_attn_scalar", enc.get("head_dim", 256)),
            attn_logit_softcapping=enc.get("attn_logit_softcapping"),
            rms_norm_eps=enc.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", enc.get("rope_theta", 10000.0)),
            sliding_window=enc.get("sliding_window"),
            layer_types=list(layer_types),
            hidden_activation=activation,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> T5GemmaEncoderConfig:
        return cls.from_hf(json.loads(Path(path).read_text()))


class GemmaRMSNorm(nn.Module):
    """RMSNorm with a zero-centred gain: x / rms(x) * (1 + w), computed in float32, cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width rotate-half RoPE tables (seq_len, head_dim), made in float32 then cast to `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head (or grouped-query) attention with RoPE and tanh logit soft-capping."""

    def __init__(self, cfg: T5GemmaEncoderConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.softcap = cfg.attn_logit_softcapping
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        logits = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        weights = torch.softmax(logits + bias, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, -1)
        return self.o_proj(out)


class GatedMLP(nn.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig):
        super().__init__()
        d, h = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, layer_type: str):
        super().__init__()
        if layer_type not in ("full_attention", "sliding_attention"):
            raise ValueError(f"T5Gemma config: unknown layer type {layer_type!r}")
        self.sliding = layer_type == "sliding_attention"
        eps = cfg.rms_norm_eps
        self.pre_self_attn_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.self_attn = SelfAttention(cfg)
        self.post_self_attn_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.mlp = GatedMLP(cfg)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.post_self_attn_layernorm(self.self_attn(self.pre_self_attn_layernorm(x), cos, sin, bias))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class T5GemmaEncoder(nn.Module):
    """T5Gemma text encoder. `forward(ids, mask)` returns the last hidden state (B, L, hidden)."""

    def __init__(self, cfg: T5GemmaEncoderConfig):
        super().__init__()
        self.config = cfg
        # An explicit (uninitialised) weight skips the random init, which on the meta device imports
        # torch._dynamo (~1 s); every value is overwritten by the checkpoint anyway.
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size)
        )
        self.layers = nn.ModuleList(EncoderLayer(cfg, t) for t in cfg.layer_types)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def attention_biases(self, mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive (B, 1, L, L) biases for full and sliding layers: 0 where a key is visible, dtype-min elsewhere.

        Keys are hidden when padded; in sliding layers also when |query - key| >= sliding_window.
        A query with no visible key (empty prompt) gets the same bias on every key, so uniform weights.
        """
        n = mask.shape[1]
        visible = mask.bool()[:, None, None, :].expand(-1, 1, n, n)
        lowest = torch.finfo(dtype).min
        full = torch.zeros(visible.shape, dtype=dtype, device=mask.device).masked_fill(~visible, lowest)
        window = self.config.sliding_window
        if window is None or window >= n:
            return full, full
        pos = torch.arange(n, device=mask.device)
        near = (pos[:, None] - pos[None, :]).abs() < window
        sliding = torch.zeros(visible.shape, dtype=dtype, device=mask.device).masked_fill(~(visible & near), lowest)
        return full, sliding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        # The scale is a tensor of the embedding dtype (sqrt(768) rounds to 27.75 in bf16), as in Gemma.
        x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        cos, sin = rope_cos_sin(input_ids.shape[1], self.config.head_dim, self.config.rope_theta, x.device, x.dtype)
        full, sliding = self.attention_biases(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, sliding if layer.sliding else full)
        return self.norm(x)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> T5GemmaEncoder:
        """Build from `<folder>/config.json` and load `model.encoder.*` of `<folder>/model.safetensors`
        in the stored dtype (the real file is bf16, so it computes in bf16), straight onto `device`;
        eval mode, frozen.

        Decoder and LM-head tensors (the real file holds the whole encoder-decoder) are skipped
        unread; any other foreign tensor is reported as unexpected.
        """
        folder = Path(folder)
        ckpt = SafetensorsFile(folder / "model.safetensors")
        keys = t5gemma_encoder_keys(ckpt.keys())
        dtypes = {str(ckpt.tensors[k].dtype) for k in keys.values() if ckpt.tensors[k].dtype.is_floating_point}
        if len(dtypes) > 1:
            raise ModelLoadError(f"{ckpt.path}: T5Gemma encoder tensors have mixed dtypes {sorted(dtypes)}")
        try:
            cfg = T5GemmaEncoderConfig.from_file(folder / "config.json")
        except (ValueError, KeyError, OSError) as e:
            raise ModelLoadError(f"T5Gemma config {folder / 'config.json'} is unusable: {e}") from e
        with torch.device("meta"):
            model = cls(cfg)
        return load_part(model, ckpt, keys, f"T5Gemma encoder checkpoint {ckpt.path}", torch.device(device), None)


def t5gemma_encoder_keys(keys: list[str]) -> dict[str, str]:
    """{encoder module key: file key} of an HF T5Gemma file: `model.encoder.*` stripped, decoder / LM head
    left out by name."""
    return {
        (k[len(ENCODER_PREFIX) :] if k.startswith(ENCODER_PREFIX) else k): k
        for k in keys
        if not k.startswith(UNUSED_PREFIXES)
    }
