"""`stable-audio` command line: generation (the default command), `encode` / `decode` with the
autoencoder, and `serve` (the HTTP server).

Everything that can be checked without a model (flag pairs, counts, files, value ranges) is checked
first, so a typo costs a second, not a model load. Usage mistakes exit with code 2 and name the flag
(argparse's convention); a failure while loading or generating prints one `stable-audio: error:`
line and exits with 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("stable_audio_3")

DEFAULT_MODEL = "demo"
SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")  # kept in step with stable_audio_3.sampling.SAMPLERS
OUTPUT_FORMATS = (".wav", ".flac", ".ogg", ".mp3")
# libsndfile subtypes per bit depth; 32-bit WAV is float (what the reference writes), FLAC stops at 24.
BIT_DEPTHS = {".wav": {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}, ".flac": {16: "PCM_16", 24: "PCM_24"}}
DEFAULT_BIT_DEPTH = {".wav": 32, ".flac": 24}
# Constant MP3 bitrates (kbps) of MPEG-1 layer III at 44.1 kHz. libsndfile maps compression_level
# 0..1 linearly onto 320..32 kbps and LAME picks the nearest legal rate (measured with libsndfile
# 1.2.2); level 1.0 itself is refused, so 32 kbps is not offered.
MP3_BITRATES = (320, 256, 224, 192, 160, 128, 112, 96, 80, 64, 56, 48, 40)
# Peak ceilings (dBFS): lossless files keep 0.1 dB of headroom; lossy codecs overshoot the input's
# peaks when decoded, so they get 1 dB.
PEAK_CEILING_DB = {".wav": -0.1, ".flac": -0.1, ".ogg": -1.0, ".mp3": -1.0}


# -- helpers shared with the web UI ---------------------------------------------------------------


def recommended_settings(
    model, steps: int | None, cfg_scale: float | None, sampler: str | None
) -> tuple[int, float, str | None]:
    """Fill unset steps / cfg / sampler with the model's recommendations: -base models want Euler,
    50 steps, cfg 7; post-trained models the reference defaults (8 steps, cfg 1, their own sampler);
    a model config may state its own `default_steps` / `default_cfg_scale` (the demo does)."""
    steps = steps or model.recommended_steps
    cfg_scale = model.recommended_cfg_scale if cfg_scale is None else cfg_scale
    return steps, cfg_scale, sampler or ("euler" if model.is_base else None)


def item_seeds(seeds: list[int], batch_size: int) -> int | list[int]:
    """What generate() gets as `seed`: one seed for one item; else one per item, so that every file's
    seed reproduces it alone. A single seed s becomes s, s+1, ...; -1 draws each item its own."""
    if batch_size == 1:
        return seeds[0]
    if len(seeds) == 1:
        return [-1] * batch_size if seeds[0] == -1 else [seeds[0] + i for i in range(batch_size)]
    return list(seeds)


def limit_peak(audio, ceiling_db: float):
    """One gain for the whole item so that its peak is at most `ceiling_db` dBFS; quieter audio is
    left alone. Returns (audio, gain in dB; 0.0 when untouched). Never clips sample by sample."""
    ceiling = 10 ** (ceiling_db / 20)
    peak = float(audio.abs().max())
    if not math.isfinite(peak):
        raise ValueError("the generated audio contains NaN or infinite samples")
    if peak <= ceiling:
        return audio, 0.0
    return audio * (ceiling / peak), 20 * math.log10(ceiling / peak)


def file_metadata(
    prompt: str, seed: int, model: str, steps: int, cfg_scale: float, negative_prompt: str | None = None
) -> dict[str, str]:
    """Title = prompt; comment = the settings that reproduce the file (WAV, FLAC, OGG and MP3 keep both)."""
    from . import __version__

    comment = f"seed={seed} model={model} steps={steps} cfg_scale={cfg_scale:g}"
    if negative_prompt:
        comment += f" negative_prompt={negative_prompt!r}"
    return {"title": prompt, "comment": comment, "software": f"stable-audio-3 {__version__}"}


def output_paths(output: str | Path, batch_size: int) -> list[Path]:
    """`name.ext` for one item; `name_0.ext`, `name_1.ext`, ... for a batch."""
    out = Path(output)
    if batch_size == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch_size)]


def codec_options(suffix: str, bit_depth: int | None, mp3_bitrate: int | None) -> dict:
    """write_audio keyword arguments for a format: the PCM subtype, or the MP3 bitrate."""
    if suffix in BIT_DEPTHS:
        return {"subtype": BIT_DEPTHS[suffix][bit_depth or DEFAULT_BIT_DEPTH[suffix]]}
    if suffix == ".mp3" and mp3_bitrate is not None:
        return {"compression_level": (320 - mp3_bitrate) / (320 - 32), "bitrate_mode": "CONSTANT"}
    return {}


def save_item(
    path: Path,
    audio,
    sample_rate: int,
    metadata: dict[str, str],
    ceiling_db: float | None = None,
    bit_depth: int | None = None,
    mp3_bitrate: int | None = None,
) -> tuple[Path, float]:
    """Peak-limit one (C, T) item and write it atomically; returns (path, gain applied in dB)."""
    import inspect

    from .audio import write_audio

    suffix = path.suffix.lower()
    audio, gain_db = limit_peak(audio, PEAK_CEILING_DB[suffix] if ceiling_db is None else ceiling_db)
    options = codec_options(suffix, bit_depth, mp3_bitrate)
    # Until write_audio forwards compression_level / bitrate_mode to soundfile, MP3s get its default.
    if "bitrate_mode" in options and "bitrate_mode" not in inspect.signature(write_audio).parameters:
        log.warning("this write_audio cannot set an MP3 bitrate; libsndfile's default (VBR) is used")
        options = {}
    return write_audio(path, audio, sample_rate, metadata=metadata, **options), gain_db


def progress_bar(total_hint: int | None = None, disable: bool = False) -> Callable[[int, int, object], None]:
    """A generate() callback drawing a tqdm bar over the sampling steps (closed at the last step)."""
    from tqdm.auto import tqdm

    bar = None

    def callback(step: int, total: int, x) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total or total_hint, desc="sampling", unit="step", disable=disable, leave=False)
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return callback


# -- argument types ---------------------------------------------------------------------------------


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if low_open else '>='} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be <= {high:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


# -- generation -----------------------------------------------------------------------------------


def build_generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stable-audio",
        description="Generate audio from text (and optionally audio) with Stable Audio 3.",
        epilog="Other commands: `stable-audio encode -h`, `stable-audio decode -h`, `stable-audio serve -h`. "
        "`stable-audio generate ...` is the same as `stable-audio ...`.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model name (demo, small-music, small-sfx, medium, and their -base versions) or a local "
        f"model folder / .safetensors file (default: {DEFAULT_MODEL})",
    )
    m.add_argument("--model-config", help="config for a bare .safetensors: a model_config.json path or a model name")
    m.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: best available)")
    m.add_argument("--no-half", action="store_true", help="compute in float32 on CUDA too (default there: float16)")
    m.add_argument(
        "--attention-padding",
        choices=("exclude", "zero-values"),
        default="exclude",
        help="exclude: padded latents take no part in attention (training semantics, default); "
        "zero-values: the reference's CPU/MPS numbers",
    )
    m.add_argument(
        "--quantize",
        choices=("int8",),
        help="CPU fast path: int8 kernels for the DiT and autoencoder (1.6-1.9x faster on 2 AVX2 cores; "
        "a measured quality cost; no LoRA)",
    )
    g = p.add_argument_group("what to generate")
    g.add_argument(
        "-p",
        "--prompt",
        action="extend",
        nargs="+",
        required=True,
        help="text prompt; repeat (or give several) for one prompt per batch item",
    )
    g.add_argument("--negative-prompt", action="extend", nargs="+", help="one, or one per batch item")
    g.add_argument(
        "--duration",
        action="extend",
        nargs="+",
        type=_number(float, 0, low_open=True),
        help="seconds; one, or one per batch item (default: the model's default duration: 120, or its maximum if "
        "shorter; 3 for the demo model)",
    )
    g.add_argument("--batch-size", type=_number(int, 1), help="items to generate (default: the number of prompts)")
    g.add_argument(
        "--seed",
        action="extend",
        nargs="+",
        type=_number(int, -1),
        help="-1 = random (default); one per item, or one seed s for items s, s+1, ...",
    )
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=_number(int, 1), help="sampling steps (default: 8; 50 for -base models)")
    s.add_argument("--cfg-scale", type=_number(float, 0), help="classifier-free guidance (default: 1; 7 for -base)")
    s.add_argument(
        "--apg-scale",
        type=_number(float, 0, 1),
        default=1.0,
        help="1 = full adaptive projected guidance, 0 = plain CFG (default: 1)",
    )
    s.add_argument("--sampler", choices=SAMPLERS, help="default: pingpong; euler for -base models")
    s.add_argument(
        "--duration-padding",
        type=_number(float, 0),
        default=6.0,
        metavar="SECONDS",
        help="headroom generated past the duration (default: 6)",
    )
    a = p.add_argument_group("audio-to-audio, inpainting, continuation")
    a.add_argument("--init-audio", metavar="PATH", help="audio to transform")
    a.add_argument(
        "--init-noise-level",
        type=_number(float, 0, 1, low_open=True),
        default=0.9,
        help="how far from the init audio to start, 0..1 (default: 0.9)",
    )
    a.add_argument("--inpaint-audio", metavar="PATH", help="audio to inpaint or continue")
    a.add_argument(
        "--inpaint-start",
        action="append",
        type=_number(float, 0),
        metavar="SECONDS",
        help="start of a region to regenerate; repeat with --inpaint-end for several regions",
    )
    a.add_argument(
        "--inpaint-end",
        action="append",
        type=_number(float, 0),
        metavar="SECONDS",
        help="end of a region to regenerate",
    )
    a.add_argument(
        "--continuation", action="store_true", help="keep all of --inpaint-audio and continue it up to --duration"
    )
    a.add_argument(
        "--paste-back",
        action="store_true",
        help="put --inpaint-audio back exactly where it is kept (20 ms crossfades into the regenerated regions)",
    )
    d = p.add_argument_group("decoding and LoRA")
    chunked = d.add_mutually_exclusive_group()
    chunked.add_argument(
        "--chunked-decode",
        dest="chunked_decode",
        action="store_const",
        const=True,
        help="decode in overlapping chunks (less memory)",
    )
    chunked.add_argument(
        "--no-chunked-decode",
        dest="chunked_decode",
        action="store_const",
        const=False,
        help="decode in one pass (default: the model config's choice)",
    )
    d.add_argument(
        "--lora-ckpt-path",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="LoRA file(s), stacked; or the name of a LoRA shipped with the model (demo: octave-up)",
    )
    d.add_argument(
        "--lora-strength",
        action="append",
        type=_number(float),
        metavar="S",
        help="strength for all LoRAs, or for the one named by the --lora-index that follows; repeatable",
    )
    d.add_argument(
        "--lora-index",
        action="append",
        type=_number(int, 0),
        metavar="I",
        help="which LoRA (0-based, in --lora-ckpt-path order) the matching --lora-strength sets",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "-o",
        "--output",
        default="output.wav",
        help="file; the extension picks the format: .wav .flac .ogg .mp3 (default: output.wav); "
        "a batch writes name_0.ext, name_1.ext, ...",
    )
    o.add_argument(
        "--bit-depth",
        type=int,
        choices=(16, 24, 32),
        help="WAV: 16, 24 or 32 (float, default); FLAC: 16 or 24 (default)",
    )
    o.add_argument(
        "--mp3-bitrate",
        type=int,
        choices=MP3_BITRATES,
        metavar="KBPS",
        help=f"constant MP3 bitrate, one of {', '.join(map(str, MP3_BITRATES))} (default: 320)",
    )
    o.add_argument(
        "--peak-ceiling",
        type=_number(float, -60, 0),
        metavar="DBFS",
        help="items whose peak is above this get one gain down to it (default: -0.1 for WAV/FLAC, -1.0 for MP3/OGG)",
    )
    return p


def _check_generate_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every check that needs no model; fills in batch_size and the output path."""
    n_prompts = len(args.prompt)
    if args.batch_size is None:
        args.batch_size = n_prompts
    elif n_prompts > 1 and args.batch_size != n_prompts:
        p.error(
            f"--batch-size {args.batch_size} does not match the {n_prompts} --prompt values; "
            "give one prompt per item, or one prompt and --batch-size"
        )
    b = args.batch_size
    for flag, values in (
        ("--negative-prompt", args.negative_prompt),
        ("--duration", args.duration),
        ("--seed", args.seed),
    ):
        if values and len(values) not in (1, b):
            p.error(f"{flag}: got {len(values)} values for a batch of {b}; give one, or one per item")

    starts, ends = args.inpaint_start or [], args.inpaint_end or []
    if len(starts) != len(ends):
        p.error(f"--inpaint-start and --inpaint-end must pair up (got {len(starts)} starts, {len(ends)} ends)")
    for s, e in zip(starts, ends, strict=True):
        if e <= s:
            p.error(f"--inpaint-end {e:g} must be after --inpaint-start {s:g}")
    if starts and args.continuation:
        p.error("--continuation keeps all of --inpaint-audio; it does not take --inpaint-start/--inpaint-end")
    if (starts or args.continuation) and not args.inpaint_audio:
        p.error(f"{'--continuation' if args.continuation else '--inpaint-start/--inpaint-end'} needs --inpaint-audio")
    if args.inpaint_audio and not (starts or args.continuation):
        p.error("--inpaint-audio needs --inpaint-start/--inpaint-end regions or --continuation")
    shipped = {}
    if args.lora_ckpt_path:
        from .loading import bundled_loras, local_model_folder

        shipped = bundled_loras(local_model_folder(args.model))
    for flag, path in (
        ("--init-audio", args.init_audio),
        ("--inpaint-audio", args.inpaint_audio),
        *(("--lora-ckpt-path", x) for x in args.lora_ckpt_path or [] if x not in shipped),
    ):
        if path and not Path(path).is_file():
            shipped_here = shipped and flag == "--lora-ckpt-path"
            hint = f" (LoRAs shipped with {args.model}: {', '.join(shipped)})" if shipped_here else ""
            p.error(f"{flag}: file not found: {path}{hint}")

    n_loras = len(args.lora_ckpt_path or [])
    strengths, indices = args.lora_strength or [], args.lora_index or []
    if (strengths or indices) and not n_loras:
        p.error("--lora-strength/--lora-index need --lora-ckpt-path")
    if args.quantize and args.lora_ckpt_path:
        p.error(f"--quantize {args.quantize} cannot be combined with --lora-ckpt-path (int8 layers take no LoRA)")
    if args.quantize and args.device not in (None, "cpu"):
        p.error(f"--quantize {args.quantize} runs on the CPU only; got --device {args.device}")
    if indices and len(indices) != len(strengths):
        p.error(f"--lora-index must pair with --lora-strength (got {len(strengths)} strengths, {len(indices)} indices)")
    if not indices and len(strengths) > 1:
        p.error("several --lora-strength values need a --lora-index each")
    for i in indices:
        if i >= n_loras:
            p.error(f"--lora-index {i} is out of range: {n_loras} LoRA file(s) given (indices 0..{n_loras - 1})")

    out = Path(args.output)
    if not out.suffix:
        out = out.with_suffix(".wav")
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        p.error(f"-o/--output: unsupported extension {out.suffix!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    if args.bit_depth is not None and args.bit_depth not in BIT_DEPTHS.get(suffix, {}):
        allowed = {s: sorted(d) for s, d in BIT_DEPTHS.items()}
        p.error(f"--bit-depth {args.bit_depth} does not apply to {suffix} output; allowed: {allowed}")
    if args.mp3_bitrate is not None and suffix != ".mp3":
        p.error(f"--mp3-bitrate applies to .mp3 output only, not {suffix}")
    if suffix == ".mp3" and args.mp3_bitrate is None:
        args.mp3_bitrate = 320
    args.output = out


def _generate(args: argparse.Namespace) -> None:
    import torch

    from .api import StableAudioModel

    log.info("loading model %s", args.model)
    model = StableAudioModel.from_pretrained(
        args.model,
        device=args.device or ("cpu" if args.quantize else None),
        config=args.model_config,
        dtype=torch.float32 if args.no_half else None,
        attention_padding=args.attention_padding,
        quantize=args.quantize,
    )
    if args.lora_ckpt_path:
        model.load_lora(args.lora_ckpt_path)
        for i, strength in enumerate(args.lora_strength or []):
            model.set_lora_strength(strength, lora_index=args.lora_index[i] if args.lora_index else None)

    b = args.batch_size
    steps, cfg_scale, sampler = recommended_settings(model, args.steps, args.cfg_scale, args.sampler)
    durations = args.duration or [model.default_duration]
    durations = durations * b if len(durations) == 1 else durations
    prompts = args.prompt * b if len(args.prompt) == 1 else args.prompt
    negatives = None
    if args.negative_prompt:
        negatives = args.negative_prompt * b if len(args.negative_prompt) == 1 else args.negative_prompt
    seeds = args.seed or [-1]
    starts, ends = args.inpaint_start, args.inpaint_end
    log.info("%s: %d steps, cfg %g, sampler %s", args.model, steps, cfg_scale, sampler or "model default")

    audio = model.generate(
        prompts,
        negative_prompt=negatives,
        duration=durations,
        steps=steps,
        cfg_scale=cfg_scale,
        seed=item_seeds(seeds, b),
        batch_size=b,
        init_audio=args.init_audio,
        init_noise_level=args.init_noise_level,
        inpaint_audio=args.inpaint_audio,
        inpaint_mask_start_seconds=starts,
        inpaint_mask_end_seconds=ends,
        continuation=args.continuation,
        inpaint_paste_back=args.paste_back,
        apg_scale=args.apg_scale,
        sampler_type=sampler,
        duration_padding_sec=args.duration_padding,
        chunked_decode=args.chunked_decode,
        truncate_output_to_duration=False,
        clamp=False,
        callback=progress_bar(steps, disable=args.quiet),
    )
    used_seeds = model.last_seeds or [seeds[0]] * b
    sr = model.sample_rate
    for i, path in enumerate(output_paths(args.output, b)):
        item = audio[i, :, : int(durations[i] * sr)]
        meta = file_metadata(
            prompts[i], used_seeds[i], str(args.model), steps, cfg_scale, negatives[i] if negatives else None
        )
        path, gain_db = save_item(path, item, sr, meta, args.peak_ceiling, args.bit_depth, args.mp3_bitrate)
        note = f", gain {gain_db:.2f} dB to keep the peak under the ceiling" if gain_db <= -0.005 else ""
        note = note or (f", gain {gain_db:.4f} dB to keep the peak under the ceiling" if gain_db else "")
        print(f"wrote {path} ({item.shape[-1] / sr:.2f} s, seed {used_seeds[i]}{note})")


# -- autoencoder ------------------------------------------------------------------------------------


def _encode(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from .api import AutoencoderModel
    from .audio import read_audio

    ae = AutoencoderModel.from_pretrained(args.model, device=args.device)
    audio, sr = read_audio(args.input)
    latents = ae.encode(audio, sr, chunked=args.chunked)
    out = Path(args.output or Path(args.input).with_suffix(".latents.safetensors"))
    save_file(
        {"latents": latents.cpu().contiguous()},
        str(out),
        metadata={"sample_rate": str(ae.sample_rate), "source": str(args.input)},
    )
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
    outputs = [
        write_audio(path, item, ae.sample_rate)
        for path, item in zip(output_paths(args.output, len(audio)), audio, strict=True)
    ]
    print("wrote " + ", ".join(str(o) for o in outputs))


def build_autoencoder_parser(command: str) -> argparse.ArgumentParser:
    helptext = {"encode": "audio file -> latents (.safetensors)", "decode": "latents (.safetensors) -> audio file"}
    p = argparse.ArgumentParser(prog=f"stable-audio {command}", description=helptext[command])
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("input", help="audio file (encode) or .safetensors latents (decode)")
    p.add_argument(
        "-o",
        "--output",
        required=command == "decode",
        help="output path" + (" (.wav, .flac, .ogg or .mp3)" if command == "decode" else ""),
    )
    p.add_argument("--model", default="same-s", help="same-s, same-l, or a local model folder / file")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--chunked", action="store_true", help="process in overlapping chunks (less memory)")
    if command == "decode":
        p.add_argument("--seed", type=int, default=None, help="seed for the decoder's noise draws")
        p.add_argument("--no-noise", action="store_true", help="skip the decoder's dither and mask noise")
    return p


# -- entry point ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("generate", "encode", "decode", "serve") else "generate"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command == "serve":
        try:
            from .server.config import main as serve_main
        except ImportError as e:
            print(f"stable-audio: error: the server is not available in this install ({e})", file=sys.stderr)
            return 1
        return serve_main(argv)

    parser = build_generate_parser() if command == "generate" else build_autoencoder_parser(command)
    args = parser.parse_args(argv)
    if command == "generate":
        _check_generate_args(parser, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")

    from .loading import ModelLoadError
    from .pipeline import GenerationCancelled

    try:
        {"generate": _generate, "encode": _encode, "decode": _decode}[command](args)
    except KeyboardInterrupt:
        print("stable-audio: interrupted", file=sys.stderr)
        return 130
    except (ModelLoadError, ValueError, TypeError, OSError, GenerationCancelled) as e:
        print(f"stable-audio: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
