"""Log-spaced Fourier features of a scalar (timesteps in the DiT, seconds in the conditioner).

The reference builds the frequencies with float32 `torch.exp` over a `linspace` ramp; the last bit of a
few of them depends on the CPU's vector kernels, and at t = 1 one ulp moves the DiT output past the
fixtures' tolerance. So the table is computed once, deterministically, exactly as the reference's
platform (glibc `expf`, torch's vectorised linspace) produced it, on every machine.
"""

from __future__ import annotations

import functools
import math
import struct
from decimal import Decimal, localcontext

import torch
from torch import nn

# glibc / ARM optimized-routines expf: 2^(k/32) from a 32-entry table times a cubic in the remainder.
_EXPF_TABLE_SIZE = 32
_EXPF_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * _EXPF_TABLE_SIZE
_EXPF_SHIFT = float.fromhex("0x1.8p+52")
_EXPF_POLY = (
    float.fromhex("0x1.c6af84b912394p-5") / 32**3,
    float.fromhex("0x1.ebfce50fac4f3p-3") / 32**2,
    float.fromhex("0x1.62e42ff0c52d6p-1") / 32,
)


def _expf_as_glibc(x: float) -> float:
    """exp of a float32, rounded to float32 exactly as glibc's `expf` does (its published algorithm).

    The reference computes the Fourier frequencies with float32 `torch.exp`, whose last bit depends
    on the CPU kernel (SLEEF on AVX2/AVX-512 differs from glibc in a few of the 128 values). Near
    t = 1 one ulp of a ~8000 Hz frequency moves cos(2π·f·t) by 3e-3, so the golden platform's values
    (which are glibc's) are reproduced here bit for bit, independently of the machine.
    """
    if not -87.0 < x < 88.0:  # glibc takes a special path out there; frequencies never need it
        raise ValueError(f"exp({x}) is outside the range this expf emulation covers")
    to_bits = struct.Struct("<d")
    n = _EXPF_TABLE_SIZE
    z = _EXPF_INV_LN2_N * x
    shifted = z + _EXPF_SHIFT  # rounds z to an integer k, stored in the low mantissa bits
    k_bits = int.from_bytes(to_bits.pack(shifted), "little")
    r = z - (shifted - _EXPF_SHIFT)
    scale_bits = (_expf_table()[k_bits % n] + (k_bits << (52 - 5))) & 0xFFFF_FFFF_FFFF_FFFF
    scale = to_bits.unpack(scale_bits.to_bytes(8, "little"))[0]  # 2^(k/32)
    c0, c1, c2 = _EXPF_POLY
    y = (c0 * r + c1) * (r * r) + (c2 * r + 1)
    return struct.unpack("<f", struct.pack("<f", y * scale))[0]


@functools.cache
def _expf_table() -> tuple[int, ...]:
    """Bits of the correctly rounded 2^(i/32), minus i << 47 (so adding k << 47 scales by 2^(k//32))."""
    with localcontext() as ctx:
        ctx.prec = 50
        bits = [int.from_bytes(struct.pack("<d", float(Decimal(2) ** (Decimal(i) / 32))), "little") for i in range(32)]
    return tuple(b - (i << 47) for i, b in enumerate(bits))


def _unit_ramp(n: int) -> torch.Tensor:
    """`torch.linspace(0, 1, n)` in float32 as torch's vectorised CPU kernel gives it: i·step for the
    first half, 1 - (n-1-i)·step for the second, each rounded once (its scalar fallback rounds twice)."""
    step = (torch.tensor(1.0, dtype=torch.float32) / (n - 1)).double()
    i = torch.arange(n, dtype=torch.float64)
    return torch.where(i < n // 2, i * step, 1.0 - (n - 1 - i) * step).float()


@functools.cache
def expo_frequencies(half_dim: int, min_freq: float, max_freq: float) -> torch.Tensor:
    """Float32 log-spaced frequencies min_freq .. max_freq, bit-identical to the golden platform's."""
    ramp = _unit_ramp(half_dim)
    log_min, log_max = math.log(min_freq), math.log(max_freq)
    exponents = ramp * (log_max - log_min) + log_min
    return torch.tensor([_expf_as_glibc(v) for v in exponents.tolist()], dtype=torch.float32)


class ExpoFourierFeatures(nn.Module):
    """t (B,) -> [cos(2π t f), sin(2π t f)] (B, dim), f log-spaced from min_freq to max_freq. No weights.

    Computed in float32 whatever the input dtype, then cast back to it.
    """

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 10000.0):
        super().__init__()
        self.dim, self.min_freq, self.max_freq = dim, min_freq, max_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return expo_fourier_features(t, self.dim, self.min_freq, self.max_freq)


@functools.lru_cache(maxsize=16)
def _frequencies_on(half_dim: int, min_freq: float, max_freq: float, device: torch.device) -> torch.Tensor:
    # One copy per device: the DiT calls this every sampling step.
    return expo_frequencies(half_dim, min_freq, max_freq).to(device)


def frequencies_on(dim: int, device: torch.device | str, min_freq: float = 0.5,
                   max_freq: float = 10000.0) -> torch.Tensor:
    """The (dim // 2,) frequencies of `expo_fourier_features` on `device` (cached per device)."""
    return _frequencies_on(dim // 2, min_freq, max_freq, torch.device(device))


def expo_fourier_features(t: torch.Tensor, dim: int = 256, min_freq: float = 0.5,
                          max_freq: float = 10000.0, frequencies: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) or (B, 1) -> (B, dim): [cos(2 pi f t), sin(2 pi f t)]; float32 inside, t's dtype out.
    `frequencies`: `frequencies_on(dim, ...)` fetched ahead, so a compiled step does not build them."""
    if frequencies is None:
        frequencies = _frequencies_on(dim // 2, min_freq, max_freq, t.device)
    angles = t.float().reshape(-1, 1) * frequencies * 2 * math.pi
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(t.dtype)
