"""What the `stable-audio` commands share (generation in `cli`, the autoencoder in `cli_autoencoder`):
the program name, numbers checked against a field's bounds, and output paths that can be written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .request import OptionError, check_number

PROG = "stable-audio"


class Number:
    """A number checked against a field's bounds by `check_number`, as the request checks it; the bounds
    stay readable (`low`, `high`, `low_open`, `integer`) so tests can compare them with the metadata."""

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 integer: bool = False):
        self.low, self.high, self.low_open, self.integer = low, high, low_open, integer
        self.__name__ = "integer" if integer else "number"

    @classmethod
    def of(cls, meta: Any) -> Number:
        return cls(meta["low"], meta["high"], meta["low_open"], meta["integer"])

    def __call__(self, text: str) -> int | float:
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            kind = "an integer" if self.integer else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            check_number(value, "", self.low, self.high, integer=self.integer, low_open=self.low_open)
        except OptionError as e:  # argparse names the flag; the message says what is allowed
            raise argparse.ArgumentTypeError(f"{text} is invalid; {e.allowed}") from None
        return value


def writable(p: argparse.ArgumentParser, out: Path, make: bool = False) -> None:
    """An output path that can be written: not a folder, in a folder that exists (`make`: is created
    now, --mkdir) and takes files. A missing folder is an error naming it: no folder appears unasked."""
    import os

    if out.is_dir():
        p.error(f"-o/--output: {out} is a folder; a file name is required")
    folder = out.parent
    if not folder.exists() and not make:
        p.error(f"-o/--output: the folder {folder} does not exist; create it, or pass --mkdir")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        p.error(f"-o/--output: cannot write {out}: {folder} is not a writable folder")
    if make:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            p.error(f"-o/--output: cannot create the folder {out.parent}: {e.strerror or e}")


def json_text(text: str) -> Any:
    """JSON options (`--dist-shift`, `--lora-configs`); their shape is checked by the request."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON ({e.msg}, column {e.colno})") from None


json_text.__name__ = "JSON"


def tier_of(args: argparse.Namespace):
    """The precision tier --precision names ("auto": the one this machine would load)."""
    from .loading import resolve_device
    from .precision import TIERS, resolve_precision

    return TIERS[resolve_precision(args.precision, resolve_device(args.device))]


def lora_checks(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, float]]:
    """LoRA names or files and their strengths, paired: [(name, strength), ...] in load order."""
    paths, strengths, indices = args.lora_ckpt_path or [], args.lora_strength or [], args.lora_index or []
    if (strengths or indices) and not paths:
        p.error("--lora-strength/--lora-index need --lora-ckpt-path")
    if paths and args.precision:
        try:
            int8 = tier_of(args).int8
        except ValueError as e:
            p.error(str(e))
        if int8:
            p.error(f"--precision {args.precision} cannot be combined with --lora-ckpt-path (int8 layers take no "
                    "LoRA; on this machine 'auto' is an int8 tier)" if args.precision == "auto" else
                    f"--precision {args.precision} cannot be combined with --lora-ckpt-path (int8 layers take no LoRA)")
    shipped: dict[str, Path] = {}
    if paths:
        from .loading import bundled_loras, local_model_folder

        shipped = bundled_loras(local_model_folder(args.model))
    for path in paths:
        if path not in shipped and not Path(path).is_file():
            hint = f" (LoRAs shipped with {args.model}: {', '.join(shipped)})" if shipped else ""
            p.error(f"--lora-ckpt-path: file not found: {path}{hint}")
    if indices and len(indices) != len(strengths):
        p.error(f"--lora-index must pair with --lora-strength (got {len(strengths)} strengths, {len(indices)} indices)")
    if not indices and len(strengths) > 1:
        p.error("several --lora-strength values need a --lora-index each")
    levels = [strengths[0] if strengths and not indices else 1.0] * len(paths)
    for i, strength in zip(indices, strengths, strict=False):
        if i >= len(paths):
            p.error(f"--lora-index {i} is out of range: {len(paths)} LoRA file(s) given (indices 0..{len(paths) - 1})")
        levels[i] = strength
    return [(path if path in shipped else Path(path).name, s) for path, s in zip(paths, levels, strict=True)]
