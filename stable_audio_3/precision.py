"""Precision tiers: what each one runs in, and which one `precision="auto"` picks for this machine.

A tier fixes the dtype of the DiT, of the conditioners and of the autoencoder, and whether the
DiT's transformer blocks run int8 matrix multiplies. Every tier here passed the quality gates on
full-size random weights (`benchmarks/bench_generate.py` measures them in every run):
(a) one DiT forward against float32 on identical inputs at t = 1.0, 0.5, 0.1: lowest SNR >= 30 dB;
(b) the SAME decoder alone on identical latents: >= 25 dB; and (c) on the trained demo model, the
demo evaluation agrees with float32 (tests/test_precision.py).

"auto" does not measure anything at load time: it looks the machine up in `AUTO`, a table of the
tier that was fastest on each class of CPU (by its instruction-set features) or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .request import PRECISIONS


@dataclass(frozen=True)
class Tier:
    """Dtypes per part; `int8`: the DiT blocks' per-step Linear layers (all of them with a float32
    DiT, all but two with a bfloat16 one; see models/quant.py) and the decoder's run int8 x int8
    matrix multiplies with per-token activation and per-channel weight scales."""

    dit: torch.dtype
    conditioner: torch.dtype
    autoencoder: torch.dtype
    int8: bool = False
    help: str = ""

    @property
    def takes_loras(self) -> bool:
        return not self.int8  # a LoRA is merged into a weight an int8 layer no longer has


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
TIERS: dict[str, Tier] = {
    "float32": Tier(F32, F32, F32, help="the reference's CPU numbers"),
    "bfloat16": Tier(BF16, BF16, BF16, help="every part in bfloat16 (fast where the CPU has bf16 units)"),
    "float16": Tier(F16, F16, F16, help="the reference's CUDA precision"),
    "int8": Tier(F32, F32, F32, int8=True, help="int8 DiT and decoder blocks, the rest float32 "
                 "(fastest on CPUs with VNNI)"),
    "int8-bf16": Tier(BF16, BF16, BF16, int8=True, help="int8 DiT and decoder blocks (fewer DiT layers), "
                      "the rest bfloat16"),
}
assert PRECISIONS == ("auto", *TIERS)  # request.py spells them without importing torch

# The tier "auto" picks, per machine class (see `machine_class`); measured with
# benchmarks/bench_generate.py, see the README's table.
# With every DiT layer in int8 (Hadamard-rotated inputs), "int8" overtook "int8-bf16" on the
# AVX512-BF16 class too: a float32 rest converts nothing around the int8 matmuls. No AMX machine has
# been measured; there AMX-BF16 may favour the bfloat16 rest.
# Without VNNI the int8 tiers are refused (see `cpu_has_int8_dot`), so those classes get float32.
AUTO: dict[str, str] = {
    "cuda": "float16",
    "mps": "float32",
    "cpu-amx": "int8-bf16",
    "cpu-avx512-bf16": "int8",
    "cpu-vnni": "int8",
    "cpu-avx512": "float32",
    "cpu-avx2": "float32",
    "cpu": "float32",
}

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@cache
def cpu_features() -> dict[str, bool]:
    """The CPU's instruction-set features that decide the fast tier (Linux: /proc/cpuinfo; elsewhere
    what PyTorch's own dispatch detected)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        capability = torch.backends.cpu.get_cpu_capability().lower()
        flags = {"avx2"} | ({"avx512f"} if "avx512" in capability else set())
    return {name: name in flags for name in CPU_FEATURES}


def describe_cpu() -> str:
    """'AVX2, AVX-512, AVX512-BF16, VNNI' style list of what the CPU has and lacks."""
    f = cpu_features()
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
             "avx_vnni": "AVX-VNNI", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}
    has = [names[k] for k in CPU_FEATURES if f[k]]
    lacks = [names[k] for k in CPU_FEATURES if not f[k]]
    return f"{', '.join(has) or 'none of the listed'} (no {', '.join(lacks)})" if lacks else ", ".join(has)


def machine_class(device: torch.device) -> str:
    if device.type in ("cuda", "mps"):
        return device.type
    f = cpu_features()
    if f["amx_bf16"]:
        return "cpu-amx"
    if f["avx512_bf16"]:
        return "cpu-avx512-bf16"
    if cpu_has_int8_dot():
        return "cpu-vnni"
    if f["avx512f"]:
        return "cpu-avx512"
    return "cpu-avx2" if f["avx2"] else "cpu"


def resolve_precision(precision: str, device: torch.device) -> str:
    """A tier name for `precision` on `device` ("auto" looked up in `AUTO`); refuses what cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid; allowed: {', '.join(map(repr, PRECISIONS))}")
    name = AUTO[machine_class(device)] if precision == "auto" else precision
    if TIERS[name].int8 and device.type != "cpu":
        raise ValueError(f"precision={precision!r} (int8) runs on the CPU only; device={device.type!r} was given")
    if TIERS[name].int8 and not cpu_has_int8_dot():
        raise ValueError(f"precision={precision!r} needs a CPU with int8 dot-product instructions (AVX512-VNNI, "
                         f"AVX-VNNI or AMX-INT8); without them PyTorch's int8 matrix multiply saturates and its "
                         f"audio is wrong. This CPU: {describe_cpu()}. Use 'auto' or 'float32'")
    if name == "float16" and device.type == "cpu":
        here = "'auto', 'bfloat16' or 'int8-bf16'" if cpu_has_int8_dot() else "'auto' or 'bfloat16'"
        raise ValueError(f"precision={precision!r} is for GPUs: float16 on the CPU is slow and inexact; use {here}")
    return name


def apply_tier(tier: Tier, dit, autoencoder, text_model=None) -> None:
    """What a tier changes after its weights are loaded in its dtypes.

    - A bfloat16 DiT keeps its timestep path (Fourier features + embedding MLP) in float32: with 8
      bits of mantissa, t = 0.1 becomes 0.10010 and the features reach kHz frequencies, which alone
      costs a forward ~25 dB against float32 at low noise levels. (float16, the reference's CUDA
      precision, keeps the reference's rounding.)
    - The int8 tiers convert the DiT's and the decoder's per-step Linear layers, and run a half
      precision text encoder in float32 where the CPU has no bf16 units (there a bf16 T5Gemma
      encode costs ~9x the float32 one).
    """
    if tier.dit == torch.bfloat16:
        dit.to_timestep_embed.float()
    if tier.int8:
        from .models.quant import quantize_model

        quantize_model(dit, autoencoder, rest=tier.dit)
        half = (torch.bfloat16, torch.float16)
        if text_model is not None and next(text_model.parameters()).dtype in half and not cpu_has_bf16_units():
            text_model.float()


def cpu_has_int8_dot() -> bool:
    """Whether `torch._int_mm` is exact here. Measured with oneDNN forced to its AVX2 code: an int8
    x int8 product then goes through 16-bit pair sums that saturate (the result differs from the
    exact one; a rotated int8 DiT's audio became NaN)."""
    f = cpu_features()
    return f["avx512_vnni"] or f["avx_vnni"] or f["amx_int8"]


def cpu_has_bf16_units() -> bool:
    f = cpu_features()
    return f["avx512_bf16"] or f["amx_bf16"]


# -- quality gates ----------------------------------------------------------------------------------
DIT_GATE_DB = 30.0
DECODER_GATE_DB = 25.0
GATE_TIMES = (1.0, 0.5, 0.1)


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference.double() - other.double()).pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise.clamp_min(1e-30)))


@torch.inference_mode()
def dit_gate(reference, dit, x: torch.Tensor, cross: torch.Tensor, glob: torch.Tensor,
             local: torch.Tensor | None = None) -> dict[float, float]:
    """Gate (a): SNR (dB) of one forward of `dit` against `reference` (float32) on identical inputs,
    per t in GATE_TIMES; every item valid."""
    out = {}
    for t in GATE_TIMES:
        times = torch.full((x.shape[0],), t, device=x.device)
        results = []
        for model in (reference, dit):
            cond = model.prepare(cross, glob, local)
            padding = model.padding([x.shape[-1]] * x.shape[0], x.shape[-1], "exclude", x.device)
            results.append(model.step_velocity(x, times, cond, padding).float())
        out[t] = snr_db(*results)
    return out


@torch.inference_mode()
def decoder_gate(reference, autoencoder, latents: torch.Tensor, chunked: bool = True) -> float:
    """Gate (b): SNR (dB) of the SAME decoder alone against `reference` (float32) on identical
    latents, without the decoder's random draws."""
    ref = reference.decode_audio(latents.float(), chunked=chunked, noise=False).float()
    dtype = next(autoencoder.parameters()).dtype
    return snr_db(ref, autoencoder.decode_audio(latents.to(dtype), chunked=chunked, noise=False).float())
