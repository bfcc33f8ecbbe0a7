"""Which device and compute dtype a model loads onto: `None` means the best available, a named one
must exist, and every refusal names the allowed values."""

from __future__ import annotations

import torch

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` picks cuda, then mps, then cpu; a named device must exist."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is invalid; allowed: None (auto), 'cpu', 'cuda', 'cuda:N', 'mps'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} is not available: this PyTorch has no usable CUDA GPU; use 'cpu', "
                         "or leave the device unset to pick the best available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} is not available: this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' is not available on this machine; use 'cpu', or leave the device unset to "
                         "pick the best available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r} is not supported; allowed: None (auto), 'cpu', 'cuda', 'mps'")
    return device


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, default: torch.dtype | None = None
) -> torch.dtype:
    """The compute dtype: the reference's fp16 on CUDA, fp32 elsewhere, unless `dtype` says otherwise."""
    if dtype is None:
        if default is not None:
            return default
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    if dtype in (torch.float32, torch.bfloat16, torch.float16):
        return dtype
    raise ValueError(
        f"dtype={dtype!r} is not supported; allowed: None (fp16 on CUDA, fp32 elsewhere), "
        "torch.float32, torch.bfloat16, torch.float16 (or 'float32', 'bfloat16', 'float16')"
    )
