"""`stable-audio long`: a long-form piece (see `longform`) from the command line.

    stable-audio long -p "sine wave a4" --duration 20 --seed 3 -o long.wav
    stable-audio long --at 0 "sine wave a4" --at 10 "sine wave e5" --duration 20 -o - | ffplay -

`-o FILE` is written atomically once the piece is done; `-o -` writes a WAV stream to standard
output (a header whose lengths say "unknown", then PCM as each stretch is final), so a player piped
to it starts after the first window. Neither applies a peak gain: samples are clamped to [-1, 1], a
fixed 0 dBFS ceiling (`--no-clamp` keeps them as they are, in a 32-bit float WAV), so the stream and
the file hold the same samples. Usage mistakes exit with 2 and name the flag, before any model
loads where they can; failures while generating exit with 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO

from . import output
from .audio import pcm_bytes, wav_header
from .cli_args import PROG, Number, json_text, lora_checks
from .longform import LONG_FIELDS, NOT_FOR_LONG_FORM, LongFormRequest
from .request import (
    FIELDS,
    PYTHON_ONLY,
    GenerationRequest,
    LoadOptions,
    OptionError,
    add_load_flags,
)

log = logging.getLogger("stable_audio_3")

COMMAND = f"{PROG} long"
DEFAULT_MODEL = "demo"
LONG_FLAGS = {"duration": "--duration", "window_seconds": "--window", "overlap_seconds": "--overlap",
              "margin_seconds": "--margin", "crossfade_seconds": "--crossfade", "max_duration": "--max-duration",
              "schedule": "--at"}
SINGLE = {"prompt": ("-p", "--prompt"), "negative_prompt": ("--negative-prompt",), "seed": ("--seed",)}
ALIASES = {"sampler_type": "--sampler", "duration_padding_sec": "--duration-padding"}  # as the main command's
# Request fields a long-form piece sets itself (its duration, its one item) or does not take.
NOT_FLAGS = {"duration", "batch_size", "init_noise_level", *NOT_FOR_LONG_FORM, *PYTHON_ONLY, *SINGLE}
STREAM_BIT_DEPTHS = (16, 24, 32)
DEFAULT_STREAM_BIT_DEPTH = 16
CLAMP_HELP = ("clamp every sample to [-1, 1], a fixed 0 dBFS ceiling (no peak gain, so a stream and a file hold the "
              "same samples); --no-clamp keeps them (32-bit float WAV only)")


def flag_of(name: str) -> str:
    """How a field is spelled here: its long-form flag, the main command's alias, or --name-with-dashes."""
    return LONG_FLAGS.get(name) or ALIASES.get(name) or SINGLE.get(name, ("--" + name.replace("_", "-"),))[-1]


def add_request_flag(group, name: str, field) -> None:
    """One flag from a request field's metadata (kinds: number, choice, pair, json, bool, text)."""
    meta, kind = field.metadata, field.metadata["kind"]
    default = None if meta["from_model"] else field.default
    text = CLAMP_HELP if name == "clamp" else meta["help"]
    if default is not None and "default" not in text and kind != "bool":
        text += f" (default: {default})"
    kw: dict = dict(dest=name, default=default, help=text.replace("%", "%%"))
    if kind == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    elif kind == "choice":
        kw["choices"] = meta["choices"]
    elif kind in ("number", "pair"):
        kw["type"] = Number.of(meta)
    elif kind == "json":
        kw.update(type=json_text, metavar="JSON")
    if kind == "pair":
        kw.update(nargs=2, metavar=("LOW", "HIGH"))
    names = [flag_of(name)] + (["--" + name.replace("_", "-")] if name in ALIASES else [])
    group.add_argument(*names, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=COMMAND, description="Generate a piece longer than the model's maximum, window by window, each "
        "window continuing the previous one's latents; prompts can change at given times.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL, help="model name or local folder / .safetensors file "
                   "(default: %(default)s)")
    m.add_argument("--model-config", help="config for a bare .safetensors: a model_config.json path or a model name")
    add_load_flags(m)
    w = p.add_argument_group("the piece")
    w.add_argument("-p", "--prompt", dest="prompt", help="the prompt from 0 s (or use --at 0 PROMPT)")
    w.add_argument("--at", dest="schedule", nargs=2, action="append", metavar=("SECONDS", "PROMPT"),
                   help="from SECONDS on, play PROMPT (repeatable; times increasing; a window takes the prompt in "
                   "force where its new part begins)")
    for name, flag in LONG_FLAGS.items():
        if name == "schedule":
            continue
        meta = LONG_FIELDS[name].metadata
        default = LONG_FIELDS[name].default
        text = meta["help"] + ("" if default is None or "default" in meta["help"] else f" (default: {default:g})")
        w.add_argument(flag, dest=name, type=Number.of(meta), default=default, metavar="SECONDS",
                       required=name == "duration", help=text.replace("%", "%%"))
    w.add_argument("--seed", dest="seed", type=Number.of(FIELDS["seed"].metadata), default=-1,
                   help="window i uses seed + i (default: -1, random)")
    w.add_argument("--negative-prompt", dest="negative_prompt", help=FIELDS["negative_prompt"].metadata["help"]
                   .split(";")[0])
    s = p.add_argument_group("sampling, decoding and LoRA (each window)")
    for name, field in FIELDS.items():
        if name not in NOT_FLAGS and field.metadata["kind"] in ("number", "choice", "pair", "json", "bool"):
            add_request_flag(s, name, field)
    s.add_argument("--lora-ckpt-path", action="extend", nargs="+", metavar="PATH",
                   help="LoRA file(s), stacked; or the name of a LoRA shipped with the model")
    s.add_argument("--lora-strength", action="append", type=float, metavar="S",
                   help="strength for all LoRAs, or for the one named by the --lora-index that follows")
    s.add_argument("--lora-index", action="append", type=Number.of(dict(low=0, high=None, integer=True,
                                                                         low_open=False)), metavar="I",
                   help="which LoRA the matching --lora-strength sets")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", default="long.wav", help="file (.wav .flac .ogg .mp3), written when the piece "
                   "is done; '-' streams WAV to standard output as the piece is made (default: %(default)s)")
    o.add_argument("--bit-depth", type=int, choices=sorted({*STREAM_BIT_DEPTHS, *output.BIT_DEPTHS[".wav"]}),
                   help=f"file: as for {PROG} (WAV default 32-bit float); stream: 16, 24 or 32 (float) "
                   f"(default: {DEFAULT_STREAM_BIT_DEPTH})")
    return p


def respell(text: str) -> str:
    """Field names in a message -> the flags typed here (`schedule[1]` -> `--at (entry 2)`, `cfg_scale=` ->
    `--cfg-scale=`): snake_case names, indexed schedule entries, and single words right before `=`."""
    def one(m: re.Match) -> str:
        name, index = m.group(1), m.group(2)
        if name == "schedule" and index:
            return f"--at (entry {int(index[1:-1]) + 1})"
        known = name in FIELDS or name in LONG_FLAGS
        if known and (index or "_" in name or text[m.end():m.end() + 1] == "="):
            return flag_of(name) + (index or "")
        return m.group(0)

    return re.sub(r"(?<![\w-])([a-z]+(?:_[a-z]+)*)(\[\d+\])?", one, text)


def describe_long(err: OptionError) -> str:
    """An OptionError in this command's words: `--window=10 is too long; ...`, `--at (entry 2): ...`."""
    base = re.match(r"[a-z_]*", err.field).group(0)
    rest = err.field[len(base):]
    spelled = respell(err.field) if rest.startswith("[") else flag_of(base) + rest
    if err.detail is None:
        return err.spelled(spelled)
    detail = respell(err.detail)
    return detail if detail.startswith(spelled) else f"{spelled}: {detail}"


def output_checks(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """-o against --bit-depth and --no-clamp: a stream is WAV (16, 24 or 32-bit float); a file's extension
    picks its format (no extension: .wav)."""
    bits = args.bit_depth
    if args.output == "-":
        if not args.clamp and (bits or DEFAULT_STREAM_BIT_DEPTH) != 32:
            p.error("--no-clamp keeps samples beyond [-1, 1], which only a 32-bit float stream holds; add "
                    "--bit-depth 32")
        return
    out = Path(args.output)
    out = out if out.suffix else out.with_suffix(".wav")
    suffix = out.suffix.lower()
    if suffix not in output.OUTPUT_FORMATS:
        p.error(f"-o/--output: unsupported extension {out.suffix!r}; allowed: {', '.join(output.OUTPUT_FORMATS)}")
    if bits is not None and bits not in output.BIT_DEPTHS.get(suffix, {}):
        p.error(f"--bit-depth {bits} does not apply to {suffix} output; allowed: "
                f"{ {s: sorted(d) for s, d in output.BIT_DEPTHS.items()} }")
    if not args.clamp and (suffix != ".wav" or (bits or output.DEFAULT_BIT_DEPTH[".wav"]) != 32):
        p.error(f"--no-clamp keeps samples beyond [-1, 1], which only a 32-bit float .wav holds; not {out.name}")
    args.output = str(out)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[LongFormRequest, LoadOptions, list]:
    """Everything that needs no model; a mistake exits with 2 naming the flag."""
    loras = lora_checks(p, args)
    output_checks(p, args)
    schedule = []
    for i, (seconds, prompt) in enumerate(args.schedule or []):
        try:
            schedule.append((float(seconds), prompt))
        except ValueError:
            p.error(f"--at (entry {i + 1}): {seconds!r} is not a number of seconds")
    values = {name: getattr(args, name) for name in FIELDS if name in vars(args) and name not in LONG_FLAGS}
    for name in values:
        if FIELDS[name].metadata["kind"] == "pair" and values[name] is not None:
            values[name] = tuple(values[name])
    try:
        long = LongFormRequest(GenerationRequest(**values), args.duration, tuple(schedule) or None,
                               args.window_seconds, args.overlap_seconds, args.margin_seconds,
                               args.crossfade_seconds, args.max_duration).verify()
        load = LoadOptions.from_namespace(args)
    except OptionError as e:
        p.error(describe_long(e))
    return long, load, loras


def write_all(stream: BinaryIO, data: bytes) -> None:
    """Write every byte: a pipe whose reader goes away mid-write takes part of it and reports that count,
    and only the next write raises BrokenPipeError."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view):]


def _load(args: argparse.Namespace, load: LoadOptions, loras: list):
    from .api import StableAudioModel

    log.info("loading model %s", args.model)
    model = StableAudioModel.from_pretrained(args.model, config=args.model_config, **load.kwargs())
    if loras:
        model.load_lora(list(args.lora_ckpt_path))
        for i, (_, strength) in enumerate(loras):
            if strength != 1.0:
                model.set_lora_strength(strength, lora_index=i)
    return model


def _progress(args: argparse.Namespace):
    """on_window (one line per window on stderr) and the sampling bar's callback."""
    bar = {"callback": None}

    def on_window(w, count: int) -> None:
        if not args.quiet:
            print(f"window {w.index + 1}/{count}: {w.first / w.sample_rate:.2f}-{w.stop / w.sample_rate:.2f} s, "
                  f"seed {w.seed}, {w.prompt!r}", file=sys.stderr, flush=True)
        bar["callback"] = output.progress_bar(disable=args.quiet)

    def callback(step: int, total: int, x) -> None:
        if bar["callback"] is not None:
            bar["callback"](step, total, x)

    return on_window, callback


def _run(args: argparse.Namespace, long: LongFormRequest, load: LoadOptions, loras: list,
         stdout: BinaryIO) -> None:
    from .audio import write_audio
    from .longform import collect, model_plan, stream_plan

    model = _load(args, load, loras)
    plan = model_plan(model, long)  # a window longer than this model allows is refused here
    r = plan.base
    if not args.quiet:
        print(f"{args.model}: {plan.describe()}; {r.steps} steps, cfg {r.cfg_scale:g}, {r.sampler_type}",
              file=sys.stderr, flush=True)
    on_window, callback = _progress(args)
    seeds = f"seeds {plan.windows[0].seed}-{plan.windows[-1].seed}" if len(plan.windows) > 1 else \
        f"seed {plan.windows[0].seed}"
    if args.output == "-":
        bits = args.bit_depth or DEFAULT_STREAM_BIT_DEPTH
        write_all(stdout, wav_header(plan.sample_rate, model.autoencoder.audio_channels, bits))
        stdout.flush()
        written = 0
        for stretch in stream_plan(model, plan, callback, on_window):
            write_all(stdout, pcm_bytes(stretch.audio, bits))
            stdout.flush()
            written += stretch.audio.shape[-1]
        if not args.quiet:
            print(f"streamed {written / plan.sample_rate:.2f} s ({len(plan.windows)} windows, {seeds})",
                  file=sys.stderr)
        return
    piece = collect(model, plan, callback, on_window)
    path = Path(args.output)
    prompts = " | ".join(f"{start:g}s: {prompt}" for start, prompt in long.entries())
    comment = (f"long-form: {plan.describe()}; seed={plan.windows[0].seed} (window i: seed + i) model={args.model} "
               f"steps={r.steps} cfg_scale={r.cfg_scale:g} sampler={r.sampler_type}")
    options = output.codec_options(path.suffix.lower(), args.bit_depth)
    path = write_audio(path, piece.audio, piece.sample_rate, metadata={"title": prompts, "comment": comment},
                       clamp=r.clamp, **options)
    print(f"wrote {path} ({piece.audio.shape[-1] / piece.sample_rate:.2f} s, {len(plan.windows)} windows, {seeds})")


def main(argv: list[str] | None = None, stdout: BinaryIO | None = None) -> int:
    """`stable-audio long ...`; returns the exit code. `stdout`: where `-o -` writes (standard output)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    long, load, loras = check_args(parser, args)

    from .loading import ModelLoadError
    from .pipeline import GenerationCancelled

    try:
        _run(args, long, load, loras, stdout or sys.stdout.buffer)
    except KeyboardInterrupt:
        print(f"{COMMAND}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the player reading the stream went away: stop generating
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush into the closed pipe at exit
        print(f"{COMMAND}: standard output was closed; stopped", file=sys.stderr)
        return 1
    except OptionError as e:  # what only the loaded model knows (its longest window, its LoRAs)
        print(f"{COMMAND}: error: {describe_long(e)}", file=sys.stderr)
        return 2
    except (ModelLoadError, ValueError, TypeError, OSError, RuntimeError, GenerationCancelled) as e:
        print(f"{COMMAND}: error: {e}", file=sys.stderr)
        return 1
    return 0
