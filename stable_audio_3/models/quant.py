"""Int8 matrix multiplies for the CPU's int8 precision tiers (`precision="int8"` / `"int8-bf16"`).

Why: the CPU's int8 dot-product units (VNNI) run `torch._int_mm` about 2x faster than bfloat16 and
4-6x faster than float32 at the DiT's shapes. Under `torch.compile` inductor fuses the quantise /
dequantise around it; eager, the int8 layers are still a little faster than bfloat16 ones.

How: weights are quantised once, symmetric per output channel; activations at run time, symmetric
per token (row), so one loud token does not crush the others' resolution. Only the Linear layers
that run once per token and step are converted: in each DiT block the self-attention qkv and the
cross-attention query and output, and the feed-forward input (the largest matrix multiply of a
block); in the SAME decoder its transformer blocks. Layers that cost the most quality stay in
floating point: the feed-forward output and the self-attention output (on full-size weights they
bring one DiT forward from 28 to 31 dB against float32); `prepare()`'s projections (cross
keys/values, local embedding) run once per generation and gain nothing from int8. The feed-forward
input passes the demo evaluation's 1 dB gate on the demo model retrained in issue 22 (worst level
change 0.87 dB), though not on the one before it (its "silence" rose by 2.3 dB).

A converted layer has no `weight` parameter, so LoRAs cannot be applied to such a model; the
precision tier says so before loading.
"""

from __future__ import annotations

import torch
from torch import nn

DIT_KEPT_FLOAT = ("ff.ff.2", "self_attn.to_out", "cross_attn.to_kv", "to_local_embed")


def int8_available() -> bool:
    """Whether this PyTorch build has the CPU int8 x int8 -> int32 matrix multiply."""
    try:
        torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (RuntimeError, AttributeError):
        return False
    return True


class Int8Linear(nn.Module):
    """A frozen nn.Linear as int8 x int8 -> int32 (`torch._int_mm`) with per-token activation and
    per-channel weight scales; float in, float out (the input's dtype)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12)
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().cpu())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        scale = (flat.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        q = torch.round(flat / scale).to(torch.int8)
        rows = q.shape[0]
        if rows <= 16:  # the kernel wants more than 16 rows
            q = torch.cat([q, q.new_zeros(17 - rows, q.shape[1])])
        out = torch._int_mm(q, self.weight_t)[:rows].float() * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token"


def quantize_linears(module: nn.Module, keep: tuple[str, ...] = (), prefix: str = "") -> int:
    """Replace, in place, every nn.Linear under `module` but those whose dotted name contains one of
    `keep` (whole components: "ff.ff.2", "to_local_embed"); returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        if type(child) is nn.Linear:
            if not any(f".{k}." in f".{full}." for k in keep):
                setattr(module, name, Int8Linear(child))
                replaced += 1
        else:
            replaced += quantize_linears(child, keep, full)
    return replaced


def quantize_model(dit: nn.Module, autoencoder: nn.Module) -> int:
    """The int8 tiers: the DiT blocks' per-step layers and the SAME decoder's transformer blocks.
    Returns the number of layers converted."""
    if not int8_available():
        raise RuntimeError("the int8 precision tiers need PyTorch's CPU int8 matrix multiply "
                           "(torch._int_mm), absent from this build; use precision='bfloat16' or 'float32'")
    converted = quantize_linears(dit.transformer.layers, DIT_KEPT_FLOAT)
    return converted + sum(quantize_linears(block) for block in autoencoder.decoder_blocks())
