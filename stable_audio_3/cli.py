"""`stable-audio` command line: generation (default) and `encode` / `decode` with the autoencoder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("stable_audio_3")


def _encode(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from .api import AutoencoderModel
    from .audio import read_audio

    ae = AutoencoderModel.from_pretrained(args.model, device=args.device)
    audio, sr = read_audio(args.input)
    latents = ae.encode(audio, sr, chunked=args.chunked)
    out = Path(args.output or Path(args.input).with_suffix(".latents.safetensors"))
    save_file({"latents": latents.cpu().contiguous()}, str(out),
              metadata={"sample_rate": str(ae.sample_rate), "source": str(args.input)})
    print(f"wrote {out}: latents {tuple(latents.shape)} from {audio.shape[-1] / sr:.2f} s at {sr} Hz")


def _decode(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file

    from .api import AutoencoderModel
    from .audio import write_audio

    ae = AutoencoderModel.from_pretrained(args.model, device=args.device)
    tensors = load_file(args.input)
    if "latents" not in tensors:
        raise ValueError(f"{args.input}: no 'latents' tensor inside (found: {', '.join(tensors)})")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    audio = ae.decode(tensors["latents"], chunked=args.chunked, noise=not args.no_noise)
    outputs = []
    for i, item in enumerate(audio):
        out = Path(args.output)
        if audio.shape[0] > 1:
            out = out.with_name(f"{out.stem}_{i}{out.suffix}")
        outputs.append(write_audio(out, item, ae.sample_rate))
    print("wrote " + ", ".join(str(o) for o in outputs))


def _autoencoder_parser(sub, name: str, helptext: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=helptext)
    p.add_argument("input", help="audio file (encode) or .safetensors latents (decode)")
    p.add_argument("-o", "--output", help="output path")
    p.add_argument("--model", default="same-s", help="same-s, same-l, or a local model folder / file")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--chunked", action="store_true", help="process in overlapping chunks (less memory)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stable-audio", description="Stable Audio 3 from the command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command")
    _autoencoder_parser(sub, "encode", "audio file -> latents (.safetensors)")
    dec = _autoencoder_parser(sub, "decode", "latents (.safetensors) -> audio file")
    dec.add_argument("--seed", type=int, default=None, help="seed for the decoder's noise draws")
    dec.add_argument("--no-noise", action="store_true", help="skip the decoder's dither and mask noise")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .loading import ModelLoadError

    try:
        if args.command == "encode":
            _encode(args)
        elif args.command == "decode":
            if not args.output:
                parser.error("decode needs -o/--output (a .wav, .flac, .ogg or .mp3 path)")
            _decode(args)
        else:
            parser.print_help()
            return 2
    except (ModelLoadError, ValueError, FileNotFoundError, TypeError) as e:
        print(f"stable-audio: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
