"""Int8 matrix multiplies for the CPU's int8 precision tiers (`precision="int8"` / `"int8-bf16"`).

Why: the CPU's int8 dot-product units (VNNI) run `torch._int_mm` about 2x faster than bfloat16 and
4-6x faster than float32 at the DiT's shapes. Under `torch.compile` inductor fuses the quantise /
dequantise around it; eager, the int8 layers are still a little faster than bfloat16 ones.

How: weights are quantised once, symmetric per output channel; activations at run time, symmetric
per token (row), so one loud token does not crush the others' resolution. In the DiT, each input
is first turned by Hadamard blocks (see `Int8Linear`), which gives back most of what int8 loses
on heavy-tailed inputs. Only the Linear layers that run once per token and step are converted;
`prepare()`'s projections (cross keys/values, local embedding) run once per generation and gain
nothing from int8. In the SAME decoder its transformer blocks are converted (gate (b) holds at
42 dB without rotation). In each DiT block, by the precision of the rest of the DiT:

- float32 rest (`"int8"`): every per-step Linear. Full-size DiT forward against float32 (gate (a),
  bar 30 dB): 31.0 dB eager, 31.1-31.8 dB compiled; 28.8 dB with plain (unrotated) int8. The
  demo evaluation moves by at most 0.3 dB (gate (c), bar 1 dB).
- bfloat16 rest (`"int8-bf16"`): bfloat16 rounding already spends much of the 30 dB budget, so
  the feed-forward output and the self-attention output stay bfloat16 (with them in int8, even
  rotated, gate (a) falls to 29.5 dB).

The int8 tiers need int8 dot-product instructions (VNNI); without them `torch._int_mm` saturates
(`precision.cpu_has_int8_dot`).

A converted layer has no `weight` parameter, so LoRAs cannot be applied to such a model; the
precision tier says so before loading.
"""

from __future__ import annotations

import torch
from torch import nn

PREPARED_ONCE = ("cross_attn.to_kv", "to_local_embed")
DIT_KEPT_FLOAT = {torch.float32: PREPARED_ONCE,
                  torch.bfloat16: ("ff.ff.2", "self_attn.to_out", *PREPARED_ONCE)}
ROTATION_BLOCK = 16  # 16, 32, 64 and 128 measured alike (gate (a) within 0.5 dB); 16 costs least


def int8_available() -> bool:
    """Whether this PyTorch build has the CPU int8 x int8 -> int32 matrix multiply."""
    try:
        torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (RuntimeError, AttributeError):
        return False
    return True


def hadamard(size: int) -> torch.Tensor:
    """The orthonormal (size x size) Sylvester-Hadamard matrix; `size` a power of two."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"size={size} is invalid; a power of two")
    h = torch.ones(1, 1)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / size**0.5


class Int8Linear(nn.Module):
    """A frozen nn.Linear as int8 x int8 -> int32 (`torch._int_mm`) with per-token activation and
    per-channel weight scales; float in, float out (the input's dtype).

    `rotate`: a block size B (ignored unless it divides the input size); each run of B input
    features is turned by an orthonormal Hadamard matrix H, in the activations at run time and in
    the weight once (x W^T = (x H)(W H)^T). It spreads a token's few large values over their
    block, so the per-token scale no longer leaves the many small ones a handful of levels (the
    feed-forward output's input, a GLU product, is heavy-tailed)."""

    def __init__(self, linear: nn.Linear, rotate: int = 0):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        self.rotate = rotate if rotate and linear.in_features % rotate == 0 else 0
        if self.rotate:
            self.register_buffer("hadamard", hadamard(self.rotate))
            weight = (weight.unflatten(1, (-1, self.rotate)) @ self.hadamard).flatten(1)
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12)
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().cpu())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if self.rotate:
            flat = (flat.unflatten(1, (-1, self.rotate)) @ self.hadamard).flatten(1)
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
        rotated = f", Hadamard blocks of {self.rotate}" if self.rotate else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token{rotated}"


def quantize_linears(module: nn.Module, keep: tuple[str, ...] = (), prefix: str = "", rotate: int = 0) -> int:
    """Replace, in place, every nn.Linear under `module` but those whose dotted name contains one of
    `keep` (whole components: "ff.ff.2", "to_local_embed") by an Int8Linear with Hadamard blocks of
    `rotate` (0: none). Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        if type(child) is nn.Linear:
            if not any(f".{k}." in f".{full}." for k in keep):
                setattr(module, name, Int8Linear(child, rotate))
                replaced += 1
        else:
            replaced += quantize_linears(child, keep, full, rotate)
    return replaced


def quantize_model(dit: nn.Module, autoencoder: nn.Module, rest: torch.dtype = torch.float32) -> int:
    """The int8 tiers: the DiT blocks' per-step layers (which ones: by `rest`, the dtype the DiT's
    other layers run in; see the module docstring) and the SAME decoder's transformer blocks.
    Returns the number of layers converted."""
    if not int8_available():
        raise RuntimeError("the int8 precision tiers need PyTorch's CPU int8 matrix multiply "
                           "(torch._int_mm), absent from this build; use precision='bfloat16' or 'float32'")
    converted = quantize_linears(dit.transformer.layers, DIT_KEPT_FLOAT[rest], rotate=ROTATION_BLOCK)
    return converted + sum(quantize_linears(block) for block in autoencoder.decoder_blocks())
