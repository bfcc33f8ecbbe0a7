"""Reading a .safetensors checkpoint into modules built on the meta device, strictly.

A missing, unexpected or mis-shaped tensor is an error that names the keys, found from the file's
header before any weight is read (a half-loaded model makes noise, not an error message). Tensors
are read straight into their final device and dtype, one at a time: no random initialisation and
no second copy of the weights. This is the one reader both the model files (`..loading`) and the
text encoder (`t5gemma`) use; it depends on torch alone, so `models/` stays self-contained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message says what to do about it."""


# -- safetensors, read lean ----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """A .safetensors file whose header is read (and checked against the file size) up front.

    `read` copies the selected tensors from disk into freshly allocated memory with plain reads
    (no memory map, so the page cache never counts as ours) and moves / casts each one before the
    next is read: the peak is the loaded model plus one tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"checkpoint not found: {self.path}")
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("file shorter than a safetensors header")
                header_len = int.from_bytes(head, "little")
                if header_len > size - 8:
                    raise ValueError(f"header claims {header_len} bytes, file holds {size}")
                header = json.loads(f.read(header_len))
            self.metadata = header.pop("__metadata__", None) or {}
            data_start = 8 + header_len
            self.tensors: dict[str, TensorInfo] = {}
            end = data_start
            for key, entry in header.items():
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                begin, stop = (int(o) for o in entry["data_offsets"])
                numel = 1
                for s in shape:
                    numel *= s
                if stop - begin != numel * torch.empty((), dtype=dtype).element_size():
                    raise ValueError(f"tensor {key!r}: byte range does not fit shape {shape} and dtype")
                self.tensors[key] = TensorInfo(dtype, shape, data_start + begin, stop - begin)
                end = max(end, data_start + stop)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ModelLoadError(_broken_file_message(self.path, f"unreadable header: {e}")) from e
        if end > size:
            raise ModelLoadError(_broken_file_message(self.path, f"it is truncated: {size} bytes, {end} needed"))

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shapes(self, keys: dict[str, str]) -> dict[str, tuple[int, ...]]:
        """{module key: shape} for a {module key: file key} mapping."""
        return {name: self.tensors[key].shape for name, key in keys.items()}

    def read(
        self,
        keys: dict[str, str],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """{module key: tensor} on `device`; floating tensors cast to `dtype` (None keeps the file's).

        A tensor that stays as stored is read straight into its own memory. One that is moved or
        cast passes through a single reused staging buffer (pinned for CUDA), so converting costs
        no more host memory than the largest tensor.
        """
        device = torch.device(device)
        items = sorted(keys.items(), key=lambda item: self.tensors[item[1]].start)  # sequential reads

        def target_dtype(info: TensorInfo) -> torch.dtype:
            return dtype if dtype is not None and info.dtype.is_floating_point else info.dtype

        staged = [
            self.tensors[k].nbytes
            for _, k in items
            if device.type != "cpu" or target_dtype(self.tensors[k]) != self.tensors[k].dtype
        ]
        staging = None
        if staged:
            staging = torch.empty(max(staged), dtype=torch.uint8, pin_memory=device.type == "cuda")
        out = {}
        with open(self.path, "rb", buffering=0) as f:
            for name, key in items:
                info = self.tensors[key]
                to = target_dtype(info)
                convert = device.type != "cpu" or to != info.dtype
                raw = staging[: info.nbytes] if convert else torch.empty(info.nbytes, dtype=torch.uint8)
                self._read_into(f, info, raw, key)
                tensor = raw.view(info.dtype).reshape(info.shape)
                if device.type == "mps" and to != info.dtype:
                    tensor = tensor.to(to)  # cast on the CPU: MPS has no float64 to cast from
                # A synchronous copy: the staging buffer is refilled right after.
                out[name] = tensor.to(device=device, dtype=to, copy=True) if convert else tensor
        return out

    def _read_into(self, f, info: TensorInfo, raw: torch.Tensor, key: str) -> None:
        if not info.nbytes:
            return
        f.seek(info.start)
        view, done = memoryview(raw.numpy()), 0
        while done < info.nbytes:
            got = f.readinto(view[done:])
            if not got:
                raise ModelLoadError(_broken_file_message(self.path, f"it ended inside tensor {key!r}"))
            done += got


def _broken_file_message(path: Path, problem: str) -> str:
    real = path.resolve()
    where = f"{path}" + (f" (stored as {real})" if real != path.absolute() else "")
    return (
        f"checkpoint {where} is truncated or not a valid safetensors file: {problem}. "
        f"Delete {real} and load the model again to download it anew (or copy the file again)."
    )


def read_safetensors(
    path: str | os.PathLike,
    prefix: str = "",
    strip: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file whose names start with `prefix` (prefix stripped)."""
    ckpt = SafetensorsFile(path)
    keys = {(k[len(prefix) :] if strip else k): k for k in ckpt.keys() if k.startswith(prefix)}
    return ckpt.read(keys, device, dtype)


# -- strict key and shape checks -----------------------------------------------------------------


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state(expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], what: str) -> None:
    """Every expected tensor present with its shape and nothing else, or a ModelLoadError naming the keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(given[k])}, model {tuple(expected[k])})"
        for k in set(given) & set(expected)
        if tuple(given[k]) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"mis-shaped tensors: {_describe(mismatched)}")
    if problems:
        raise ModelLoadError(f"{what} does not match the model: " + "; ".join(problems))


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_strict(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load `state` into `module`; every tensor must exist, fit, and be used (bar `ignore_prefixes`)."""
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    check_state(module_shapes(module), {k: tuple(v.shape) for k, v in state.items()}, what)
    if any(t.is_meta for t in expected.values()):
        module.load_state_dict(state, strict=True, assign=True)
    else:
        module.load_state_dict(state, strict=True)


def split_checkpoint_keys(keys: list[str], parts: dict[str, str], source: str) -> dict[str, dict[str, str]]:
    """{part: {module key: file key}}: each file key goes to the part whose prefix it starts with.

    A key that belongs to no part is an error naming it (a file from another model, or repackaged
    under other names), so that no tensor is ever silently dropped.
    """
    out: dict[str, dict[str, str]] = {part: {} for part in parts}
    stray = []
    for key in keys:
        for part, prefix in parts.items():
            if key.startswith(prefix):
                out[part][key[len(prefix) :]] = key
                break
        else:
            stray.append(key)
    if stray:
        allowed = ", ".join(f"{p}*" for p in parts.values())
        raise ModelLoadError(
            f"{source}: tensors outside {allowed}: {_describe(sorted(stray), 10)}; "
            "is this the official Stable Audio 3 checkpoint layout?"
        )
    return out


def load_part(
    module: nn.Module,
    ckpt: SafetensorsFile,
    keys: dict[str, str],
    what: str,
    device: torch.device,
    dtype: torch.dtype | None,
) -> nn.Module:
    """Check `keys` against a (meta) module from the header alone, then read them in place."""
    check_state(module_shapes(module), ckpt.shapes(keys), what)
    module.load_state_dict(ckpt.read(keys, device, dtype), strict=True, assign=True)
    return module.eval().requires_grad_(False)
