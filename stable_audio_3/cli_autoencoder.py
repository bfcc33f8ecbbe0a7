"""`stable-audio encode` / `stable-audio decode`: the SAME autoencoder alone, audio <-> latents
(.safetensors). Inputs and the output path are checked before the model loads (exit 2 for a mistake),
as for generation."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import output
from .cli_args import PROG, Number
from .cli_args import writable as _writable
from .request import DEFAULT_LIMITS, SEED_MAX


def encode(args: argparse.Namespace, audio, sr: int, out: Path) -> None:
    import os
    import tempfile

    from safetensors.torch import save_file

    from .api import AutoencoderModel

    ae = AutoencoderModel.from_pretrained(args.model, device=args.device)
    latents = ae.encode(audio, sr, chunked=args.chunked)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".safetensors", dir=out.parent)
    except OSError as e:
        raise OSError(f"cannot write {out}: {e.strerror or e}") from None
    os.close(fd)
    try:  # written whole or not at all, as the audio files are
        save_file({"latents": latents.cpu().contiguous()}, tmp,
                  metadata={"sample_rate": str(ae.sample_rate), "source": str(args.input)})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {out}: latents {tuple(latents.shape)} from {audio.shape[-1] / sr:.2f} s at {sr} Hz")


def read_latents(path: str):
    """The 'latents' tensor of a .safetensors file, checked: (latent_dim, frames) or (batch, latent_dim,
    frames), at least one frame, finite. A file that is not such a file is a ValueError naming it."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            keys = list(f.keys())
            if "latents" not in keys:
                raise ValueError(f"{path}: no 'latents' tensor inside (found: {', '.join(keys) or 'nothing'})")
            latents = f.get_tensor("latents")
    except ValueError:
        raise
    except Exception as e:  # safetensors' own error type: not a safetensors file, truncated, ...
        raise ValueError(f"{path}: not a readable .safetensors latents file ({e})") from None
    if latents.dim() not in (2, 3) or latents.shape[-1] == 0 or not latents.is_floating_point():
        raise ValueError(f"{path}: 'latents' is {latents.dtype} {tuple(latents.shape)}; floating-point (latent_dim, "
                         "frames) or (batch, latent_dim, frames) with at least one frame is required")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError(f"{path}: 'latents' holds NaN or infinite values")
    return latents


def decode(args: argparse.Namespace, latents) -> None:
    import torch

    from .api import AutoencoderModel
    from .audio import write_audio

    ae = AutoencoderModel.from_pretrained(args.model, device=args.device)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    audio = ae.decode(latents, chunked=args.chunked, noise=not args.no_noise)
    outputs = [write_audio(path, item, ae.sample_rate)
               for path, item in zip(output.output_paths(args.output, len(audio)), audio, strict=True)]
    print("wrote " + ", ".join(str(o) for o in outputs))


def build_autoencoder_parser(command: str) -> argparse.ArgumentParser:
    helptext = {"encode": "audio file -> latents (.safetensors)", "decode": "latents (.safetensors) -> audio file"}
    p = argparse.ArgumentParser(prog=f"{PROG} {command}", description=helptext[command])
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("input", help="audio file (encode) or .safetensors latents (decode)")
    p.add_argument("-o", "--output", required=command == "decode",
                   help="output path" + (" (.wav, .flac, .ogg or .mp3)" if command == "decode" else ""))
    p.add_argument("--model", default="same-s", help="same-s, same-l, or a local model folder / file")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--chunked", action="store_true", help="process in overlapping chunks (less memory)")
    p.add_argument("--mkdir", action="store_true", help="create the output folder (and its parents) if missing")
    if command == "decode":
        p.add_argument("--seed", type=Number(0, SEED_MAX, integer=True), default=None,
                       help="seed for the decoder's noise draws")
        p.add_argument("--no-noise", action="store_true", help="skip the decoder's dither and mask noise")
    return p


def check_autoencoder_args(p: argparse.ArgumentParser, command: str, args: argparse.Namespace) -> tuple:
    """encode: the audio read and the output checked; decode: the latents read and the output's format
    checked; all before the model loads (a mistake exits with code 2)."""
    if command == "encode":
        from .audio import read_audio

        try:
            audio, sr = read_audio(args.input, max_values=DEFAULT_LIMITS.max_input_values)
            DEFAULT_LIMITS.check_audio(args.input, sr, audio.shape[0], audio.shape[-1])
        except (ValueError, OSError) as e:  # OptionError included
            p.error(str(e))
        out = Path(args.output or Path(args.input).with_suffix(".latents.safetensors"))
        _writable(p, out, args.mkdir)
        return audio, sr, out
    out = Path(args.output)
    if out.suffix.lower() not in output.OUTPUT_FORMATS:
        p.error(f"-o/--output: unsupported extension {out.suffix!r}; allowed: {', '.join(output.OUTPUT_FORMATS)}")
    _writable(p, out, args.mkdir)
    try:
        return (read_latents(args.input),)
    except ValueError as e:
        p.error(str(e))
