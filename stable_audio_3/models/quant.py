"""Int8 dynamic quantization of Linear layers: the CPU fast path (`quantize="int8"`).

Why: on the CPU about 85% of generate()'s time is spent in Linear layers, and on CPUs without bf16
matrix units (AVX2, AVX-512 without AMX) bfloat16 is several times *slower* than float32. FBGEMM's
int8 kernels run the same layers about 2.4x faster than float32.

How: weights are quantized once, symmetric per output channel; activations are quantized at run time
per tensor with a 7-bit range (`reduce_range`), so AVX2's 16-bit intermediate sums cannot saturate.
One layer keeps about 33 dB SNR; the end-to-end cost is measured by `benchmarks/bench_generate.py`.
Only the layers that run once per token in the transformer blocks are converted (the DiT's blocks,
the SAME resampling blocks); embedders, norms, convolutions, the projections into and out of the
latent space, the conditioners and the text encoder stay as loaded.

A quantized layer has no `weight` parameter, so LoRAs and `state_dict()` round trips are not
available on a quantized model; `api.StableAudioModel` refuses them with a clear message.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_MODES = ("int8",)


def check_quantize(quantize: str | None, device: torch.device) -> str | None:
    """None or "int8"; int8 needs the CPU (its kernels are FBGEMM's)."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE_MODES:
        allowed = ", ".join(map(repr, QUANTIZE_MODES))
        raise ValueError(f"quantize={quantize!r} is not supported; allowed: None, {allowed}")
    if device.type != "cpu":
        raise ValueError(f"quantize={quantize!r} runs on the CPU only; device={device.type!r} was given")
    engines = set(torch.backends.quantized.supported_engines)
    if not {"fbgemm", "x86"} & engines or not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise RuntimeError(f"quantize={quantize!r} needs PyTorch's x86 quantized kernels, absent from this build")
    return quantize


class Int8Linear(nn.Module):
    """A frozen nn.Linear computed by FBGEMM's dynamic int8 kernel; float in, float out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated; check_quantize tests the kernels
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self.packed, True)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def quantize_linears(module: nn.Module) -> int:
    """Replace, in place, every nn.Linear under `module`; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child))
            replaced += 1
        else:
            replaced += quantize_linears(child)
    return replaced


def quantize_model(dit: nn.Module, autoencoder: nn.Module, text_model: nn.Module | None = None) -> int:
    """The int8 fast path: the DiT's transformer blocks and the autoencoder's encoder and decoder
    (the conditioners stay as loaded). A half-precision text encoder is run in float32: without bf16
    units a bf16 T5Gemma encode costs about 9x the float32 one (3.3 s against 0.36 s at full size
    here). Returns the number of layers converted to int8."""
    if text_model is not None and next(text_model.parameters()).dtype in (torch.bfloat16, torch.float16):
        text_model.float()
    blocks = [dit.transformer.layers, autoencoder.encoder.layers[0], autoencoder.decoder.layers[3]]
    return sum(quantize_linears(block) for block in blocks)
