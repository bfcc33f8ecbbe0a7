"""`stable-audio` command line: generation (the default command; `--from-metadata FILE` generates a
file again from its metadata, see `reproduce`), `encode` / `decode` with the autoencoder
(`cli_autoencoder`), `serve` (the HTTP server) and `long` (long-form, `longform_cli`).

The generation flags are made from `GenerationRequest` and `LoadOptions`, so every option, default,
bound and help line is written once, in `request.py`. Everything that can be checked without a model
is checked first, so a typo costs a second, not a model load. A usage mistake (a bad value, flags
that do not pair up, a missing file; also a too-long duration, found once the model is known) exits
with code 2 and names the flag; a failure while loading or generating prints one
`stable-audio: error:` line and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from . import output
from .cli_args import PROG, Number, json_text, lora_checks
from .cli_args import writable as _writable
from .request import (
    DEFAULT_LIMITS,
    FIELDS,
    LOAD_FIELDS,
    PYTHON_ONLY,
    GenerationRequest,
    LoadOptions,
    OptionError,
    add_load_flags,
)

log = logging.getLogger("stable_audio_3")

DEFAULT_MODEL = "demo"
# Short spellings users already type; each sets the field's own dest. Messages use the first long one.
ALIASES = {"prompt": ("-p",), "sampler_type": ("--sampler",), "duration_padding_sec": ("--duration-padding",),
           "inpaint_mask_start_seconds": ("--inpaint-start",), "inpaint_mask_end_seconds": ("--inpaint-end",),
           "inpaint_paste_back": ("--paste-back",)}
GROUPS = {
    "what to generate": ("prompt", "negative_prompt", "duration", "batch_size", "seed"),
    "sampling": ("steps", "cfg_scale", "sampler_type", "apg_scale", "cfg_interval", "scale_phi", "cfg_norm_threshold",
                 "dist_shift", "duration_padding_sec", "sample_size"),
    "audio-to-audio, inpainting, continuation": ("init_audio", "init_noise_level", "inpaint_audio",
                                                 "inpaint_mask_start_seconds", "inpaint_mask_end_seconds",
                                                 "continuation", "inpaint_paste_back"),
    "decoding and LoRA": ("chunked_decode", "clamp", "lora_configs"),
}

# Where the command line's meaning differs from the Python call's: the model always runs unclamped here.
CLI_HELP = {
    "clamp": "keep every sample in [-1, 1] with one gain per file down to --peak-ceiling, never clipping; "
    "--no-clamp writes the model's samples as they are (32-bit float .wav only)",
    "inpaint_mask_start_seconds": "start of a region to regenerate; repeat with --inpaint-end for several regions",
    "inpaint_mask_end_seconds": "end of a region to regenerate",
}


def option_strings(name: str) -> list[str]:
    """The flags of a request or load field: its aliases, then `--name-with-dashes`."""
    return [*ALIASES.get(name, ()), "--" + name.replace("_", "-")]


def flag(name: str) -> str:
    """How messages spell a field: its first long flag (`--sampler` for sampler_type)."""
    return next(s for s in option_strings(name) if s.startswith("--"))


FLAGS = {name: flag(name) for name in [*FIELDS, *LOAD_FIELDS] if name not in PYTHON_ONLY}


def respell(text: str) -> str:
    """Python field names in a message or help line -> the flags a user types (`cfg_scale` -> `--cfg-scale`)."""
    text = re.sub(r"(?<![\w-])([a-z]+(?:_[a-z]+)+)\b", lambda m: FLAGS.get(m.group(1), m.group(1)), text)
    text = re.sub(r"(?<![\w-])([a-z]+)(?= has |=)", lambda m: FLAGS.get(m.group(1), m.group(1)), text)
    return re.sub(r"(--[a-z-]+)=True\b", r"\1", text)


def describe(err: OptionError) -> str:
    """An OptionError in the command line's words: `--cfg-scale=-1 is invalid; ...`."""
    base = re.match(r"[a-z_]*", err.field).group(0)
    spelled = FLAGS.get(base, base) + err.field[len(base):]
    text = respell(err.spelled(spelled))
    prefix = f"{spelled}: "
    return text[len(prefix):] if text.startswith(prefix + "--") else text  # the detail names its flags itself


# -- argument types -------------------------------------------------------------------------------


class Items(argparse.Action):
    """One value, or one per batch item, gathered over repeats (`-p a -p b` == `-p a b`); a default
    that is one value (seed -1) is replaced, not extended."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        items = list(current) if isinstance(current, list) else []
        setattr(namespace, self.dest, items + (list(values) if isinstance(values, list) else [values]))


# -- generation -----------------------------------------------------------------------------------


def _config_of(model: str | None) -> dict | None:
    """The config of `model` when it is cheap to know (the demo, a packaged Hub model, a local folder or
    a file next to its model_config.json), read without torch; else None."""
    from importlib import resources

    name = str(model or DEFAULT_MODEL)
    try:
        if name == DEFAULT_MODEL:
            return json.loads(resources.files("stable_audio_3").joinpath("assets", DEFAULT_MODEL,
                                                                         "model_config.json").read_text())
        path = Path(name)
        for candidate in (path / "model_config.json", path.parent / "model_config.json"):
            if path.exists() and candidate.is_file():
                return json.loads(candidate.read_text())
        packaged = resources.files("stable_audio_3").joinpath("configs", f"{name}.json")
        return json.loads(packaged.read_text()) if packaged.is_file() else None
    except (OSError, ValueError):
        return None


@cache
def _model_defaults_help(model: str | None = None) -> dict[str, str]:
    """The `(default: ...)` part of the help of the fields whose default is the model's: what `model` (the
    default demo, or the one `--model` names) recommends, read from its config so that `-h` cannot drift
    from it, and what other models use."""
    from .request import ModelDefaults

    def of(objective: str) -> ModelDefaults:
        return ModelDefaults.from_config({"model": {"diffusion": {"diffusion_objective": objective}}})

    post, base = of("rf_denoiser"), of("rectified_flow")
    name = str(model or DEFAULT_MODEL)
    try:
        config = _config_of(name)
        d = ModelDefaults.from_config(config) if config else None
    except (KeyError, TypeError, ValueError):  # not a generation model's config
        d = None
    shown = Path(name).name if Path(name).exists() else name
    others = {"steps": f"post-trained models {post.steps}, -base {base.steps}",
              "cfg_scale": f"post-trained models {post.cfg_scale:g}, -base {base.cfg_scale:g}",
              "sampler_type": f"post-trained models {post.sampler}, -base {base.sampler}",
              "duration": f"others {post.duration:g} s or their maximum if shorter",
              "inpaint_paste_back": "off unless a model's card recommends it"}
    if d is None:
        mine = {}
    else:
        mine = {"steps": str(d.steps), "cfg_scale": f"{d.cfg_scale:g}", "sampler_type": d.sampler,
                "duration": f"{d.duration:g} s", "inpaint_paste_back": "on" if d.inpaint_paste_back else "off"}
    return {field: (f"default: the model's recommended: {mine[field]} for {shown}; {text}" if field in mine else
                    f"default: the model's recommended: {text}") for field, text in others.items()}


def field_help(name: str, meta: Any, default: Any, model: str | None = None) -> str:
    """The field's help line in flag spelling, with the default the command line really uses (for
    `model`'s recommendations: the demo's unless `--model` names another)."""
    text = CLI_HELP.get(name, meta["help"]).replace("%", "%%").replace("(None: ", "(default: ")
    if name in _model_defaults_help(model):
        text = f"{text.split(' (default')[0].split('; None:')[0]} ({_model_defaults_help(model)[name]})"
    elif default is not None and "default" not in text:
        text += " (default: %(default)s)" if meta["kind"] == "bool" else f" (default: {default})"
    return respell(text)


def add_field(group: argparse._ArgumentGroup, name: str, field: Any, required: bool = False,
              model: str | None = None) -> argparse.Action:
    """One flag made from a request or load field's metadata."""
    meta, kind = field.metadata, field.metadata["kind"]
    default = None if meta["from_model"] else field.default
    kw: dict[str, Any] = dict(dest=name, default=default, help=field_help(name, meta, default, model))
    if kind == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    elif kind == "choice":
        kw["choices"] = meta["choices"]
    elif kind in ("number", "regions", "pair"):
        kw.update(type=Number.of(meta), metavar="SECONDS" if kind == "regions" or "duration" in name else None)
    elif kind == "json":
        kw.update(type=json_text, metavar="JSON")
    elif kind == "audio":
        kw["metavar"] = "PATH"
    if kind == "pair":
        kw.update(nargs=2, metavar=("LOW", "HIGH"))
    if meta["per_item"]:
        kw.update(action=Items, nargs="+")
    elif kind == "regions":
        kw["action"] = Items
    return group.add_argument(*option_strings(name), required=required, **kw)


def build_generate_parser(model: str | None = None) -> argparse.ArgumentParser:
    """The generation flags; `model` (what `--model` names, for -h) picks the recommendations the help shows."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generate audio from text (and optionally audio) with Stable Audio 3.",
        epilog="Other commands: `stable-audio encode -h`, `stable-audio decode -h`, `stable-audio serve -h`. "
        "`stable-audio generate ...` is the same as `stable-audio ...`.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--from-metadata", metavar="FILE", help="generate again the audio file FILE (written by "
                   "stable-audio, the page or the server) from the request its metadata records: same model, "
                   "LoRAs, settings and seed (with the input audio again: --init-audio / --inpaint-audio)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL, help="model name (demo, small-music, small-sfx, medium, and "
                   "their -base versions) or a local model folder / .safetensors file (default: %(default)s)")
    m.add_argument("--model-config", help="config for a bare .safetensors: a model_config.json path or a model name")
    add_load_flags(m)
    m.add_argument("--no-half", dest="dtype", action="store_const", const="float32", help=argparse.SUPPRESS)
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    group_of = {name: groups[title] for title, names in GROUPS.items() for name in names}
    for name, field in FIELDS.items():
        if name not in PYTHON_ONLY:  # a field added later still gets a flag, in the last group
            add_field(group_of.get(name, groups["decoding and LoRA"]), name, field, model=model)
    d = groups["decoding and LoRA"]
    d.add_argument("--lora-ckpt-path", action="extend", nargs="+", metavar="PATH",
                   help="LoRA file(s), stacked; or the name of a LoRA shipped with the model (demo: octave-up)")
    d.add_argument("--lora-strength", action="append", type=Number(), metavar="S",
                   help="strength for all LoRAs, or for the one named by the --lora-index that follows; repeatable")
    d.add_argument("--lora-index", action="append", type=Number(0, integer=True), metavar="I",
                   help="which LoRA (0-based, in --lora-ckpt-path order) the matching --lora-strength sets")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", default="output.wav", help="file; the extension picks the format: .wav .flac "
                   ".ogg .mp3 (default: output.wav); a batch writes name_0.ext, name_1.ext, ...; its folder "
                   "must exist (see --mkdir)")
    o.add_argument("--mkdir", action="store_true", help="create the output folder (and its parents) if missing")
    depths = "; ".join(f"{suffix[1:].upper()}: {', '.join(map(str, sorted(bits)))} (default: "
                       f"{output.DEFAULT_BIT_DEPTH[suffix]})" for suffix, bits in output.BIT_DEPTHS.items())
    o.add_argument("--bit-depth", type=int, choices=sorted({b for bits in output.BIT_DEPTHS.values() for b in bits}),
                   help=f"{depths}; 32-bit WAV is float")
    o.add_argument("--mp3-bitrate", type=int, choices=output.MP3_BITRATES, metavar="KBPS",
                   help=f"constant MP3 bitrate, one of {', '.join(map(str, output.MP3_BITRATES))} (default: "
                   f"{output.DEFAULT_MP3_BITRATE})")
    formats_at: dict[float, list[str]] = {}
    for suffix, db in output.PEAK_CEILING_DB.items():
        formats_at.setdefault(db, []).append(suffix[1:].upper())
    ceilings = ", ".join(f"{db} for {'/'.join(names)}" for db, names in formats_at.items())
    o.add_argument("--peak-ceiling", type=Number(-60, 0), metavar="DBFS",
                   help=f"with --clamp, items whose peak is above this get one gain down to it, never clipping "
                   f"(default: {ceilings}); --no-clamp writes the model's samples as they are (32-bit WAV only)")
    return p


def generation_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """field name -> the action that sets it (its dest), for tests that hold every surface to the request type."""
    fields = {name for name in [*FIELDS, *LOAD_FIELDS] if name not in PYTHON_ONLY}
    return {a.dest: a for a in parser._actions if a.dest in fields and a.help != argparse.SUPPRESS}


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    """The one request the flags describe: a per-item flag given once is one value for the whole batch
    (one seed = one generator shared by the batch, the request's rule)."""
    values = {}
    for name, field in FIELDS.items():
        if name in PYTHON_ONLY:
            continue
        value = getattr(args, name)
        if field.metadata["per_item"] and isinstance(value, list) and len(value) == 1:
            value = value[0]
        values[name] = tuple(value) if field.metadata["kind"] == "pair" else value
    return GenerationRequest(**values)


def _output_checks(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The output path's format against --bit-depth, --mp3-bitrate and --no-clamp; no extension means .wav."""
    out = Path(args.output)
    out = out if out.suffix else out.with_suffix(".wav")
    suffix = out.suffix.lower()
    if suffix not in output.OUTPUT_FORMATS:
        p.error(f"-o/--output: unsupported extension {out.suffix!r}; allowed: {', '.join(output.OUTPUT_FORMATS)}")
    _writable(p, out, args.mkdir)
    if args.bit_depth is not None and args.bit_depth not in output.BIT_DEPTHS.get(suffix, {}):
        allowed = {s: sorted(d) for s, d in output.BIT_DEPTHS.items()}
        p.error(f"--bit-depth {args.bit_depth} does not apply to {suffix} output; allowed: {allowed}")
    if args.mp3_bitrate is not None and suffix != ".mp3":
        p.error(f"--mp3-bitrate applies to .mp3 output only, not {suffix}")
    if not args.clamp:
        if suffix != ".wav" or (args.bit_depth or output.DEFAULT_BIT_DEPTH[".wav"]) != 32:
            p.error(f"--no-clamp keeps samples beyond [-1, 1], which only a 32-bit float .wav holds; not {suffix}"
                    + (f" at {args.bit_depth} bits" if suffix == ".wav" else ""))
        if args.peak_ceiling is not None:
            p.error("--peak-ceiling applies with --clamp only; --no-clamp writes the samples as they are")
    args.output = out


def _input_audio_checks(p: argparse.ArgumentParser, request: GenerationRequest) -> None:
    """Read --init-audio / --inpaint-audio now (bounded by the limits), so that an unreadable or
    too-large file is a usage error before the model loads, not a failure after it."""
    from .audio import read_audio

    for name in ("init_audio", "inpaint_audio"):
        path = getattr(request, name)
        if path is None:
            continue
        try:
            audio, sr = read_audio(path, max_values=DEFAULT_LIMITS.max_input_values, name=f"{flag(name)} {path}")
            DEFAULT_LIMITS.check_audio(name, sr, audio.shape[0], audio.shape[-1])
        except OptionError as e:
            p.error(describe(e))
        except (ValueError, OSError) as e:
            p.error(str(e))


def check_generate_args(p: argparse.ArgumentParser, args: argparse.Namespace
                        ) -> tuple[GenerationRequest, LoadOptions, list[tuple[str, float]]]:
    """Every check that needs no model, before any loads; a mistake exits with code 2 naming the flag.
    Input audio files are read here too. With --from-metadata, the request is the file's (`reproduce`)."""
    args.item = None  # every item of the batch is written (--from-metadata: only the recorded one)
    if args.from_metadata:
        from . import reproduce

        request, load, loras = reproduce.check_args(p, args, describe, flag)
        lora_checks(p, argparse.Namespace(**{**vars(args), "lora_strength": None, "lora_index": None,
                                              "precision": load.precision}))
    else:
        if args.prompt is None:
            p.error("the following arguments are required: -p/--prompt (or --from-metadata FILE)")
        loras = lora_checks(p, args)
        try:
            request = request_from_args(args).verify()
            load = LoadOptions.from_namespace(args)
        except OptionError as e:
            p.error(describe(e))
    _output_checks(p, args)
    _device_check(p, load)
    _input_audio_checks(p, request)
    return request, load, loras


def _device_check(p: argparse.ArgumentParser, load: LoadOptions) -> None:
    """A --device this machine lacks is a usage error now, not a failed load."""
    if load.device is None:
        return
    from .loading import resolve_device

    try:
        resolve_device(load.device)
    except ValueError as e:
        reason = re.sub(r"^device='[^']*' ", "", str(e).split("; ")[0])
        hint = ("use --device cpu" if "not available" in reason else "allowed: cpu, cuda, cuda:N, mps")
        p.error(f"--device {load.device} {reason}; {hint}, or leave --device out to pick the best available")


def _generate(args: argparse.Namespace, request: GenerationRequest, load: LoadOptions,
              loras: list[tuple[str, float]]) -> None:
    from .api import StableAudioModel

    log.info("loading model %s", args.model)
    model = StableAudioModel.from_pretrained(args.model, config=args.model_config, **load.kwargs())
    if loras:
        model.load_lora(list(args.lora_ckpt_path))
        for i, (_, strength) in enumerate(loras):
            if strength != 1.0:
                model.set_lora_strength(strength, lora_index=i)
    chosen = request.inpaint_paste_back
    request = request.recommended(model.defaults)  # inpainting: the model's paste-back unless told
    # The model runs unclamped: --clamp keeps each file in [-1, 1] with one gain (no clipping).
    planned = request.resolve(model.defaults)  # a too-long duration is refused here, before sampling
    log.info("%s: %d steps, cfg %g, sampler %s", args.model, planned.steps, planned.cfg_scale, planned.sampler_type)
    gen = model.run(request.replace(clamp=False), callback=output.progress_bar(planned.steps, disable=args.quiet))
    r, sr = gen.request.replace(clamp=request.clamp), gen.sample_rate
    digests, used = output.audio_digests(r), model.load_options
    paste = ""
    if r.inpaint_audio is not None:
        paste = f", paste-back {'on' if r.inpaint_paste_back else 'off'}" + (
            " (the model's recommendation; --paste-back / --no-paste-back choose)" if chosen is None else "")
    for i, path in enumerate(output.output_paths(args.output, 1 if args.item is not None else r.batch_size)):
        i = i if args.item is None else args.item
        item = output.item_audio(gen.audio, r, i, sr)
        record = output.file_record(r, gen.seeds, i, str(args.model), loras, used, digests, args.model_config)
        meta = output.file_metadata(r, gen.seeds, i, str(args.model), loras, path.suffix, record)
        path, gain_db = output.save_item(path, item, sr, meta, args.peak_ceiling, args.bit_depth, args.mp3_bitrate,
                                         clamp=request.clamp)
        shared = f", item {i} of a batch" if r.batch_size > 1 and not isinstance(r.seed, list) else ""
        digits = 2 if gain_db <= -0.005 else 4  # a gain too small for 2 decimals still shows
        note = f", gain {gain_db:.{digits}f} dB to keep the peak under the ceiling" if gain_db else ""
        print(f"wrote {path} ({item.shape[-1] / sr:.2f} s, seed {output.item_seed(gen.seeds, i)}{shared}{paste}"
              f"{note})")


# -- entry point ------------------------------------------------------------------------------------


def _named_model(argv: list[str]) -> str | None:
    """What `--model` names on a command line asking for help, so -h shows that model's defaults."""
    if not {"-h", "--help"} & set(argv):
        return None
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return None


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the same cleanup as Ctrl-C runs (no temporary files)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """`stable-audio`: 0 on success, 2 for a usage mistake (before any model loads), 1 for a failure,
    130 / 143 when interrupted / terminated; errors are one line, never a traceback."""
    import signal

    previous = None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["serve"]:  # the server handles its own signals
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        return _main(argv)
    except Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("generate", "encode", "decode", "serve", "long") else "generate"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command == "serve":
        try:
            from .server.config import main as serve_main
        except ImportError as e:
            print(f"{PROG}: error: the server is not available in this install ({e})", file=sys.stderr)
            return 1
        return serve_main(argv)
    if command == "long":  # long-form generation: its own module, built on the same request type
        from .longform_cli import main as long_main

        return long_main(argv)

    if command == "generate":
        parser = build_generate_parser(_named_model(argv))
    else:
        from . import cli_autoencoder

        parser = cli_autoencoder.build_autoencoder_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if command == "generate":
        checked = check_generate_args(parser, args)
    else:
        checked = cli_autoencoder.check_autoencoder_args(parser, command, args)

    from .loading import ModelLoadError
    from .pipeline import GenerationCancelled

    try:
        run = _generate if command == "generate" else getattr(cli_autoencoder, command)
        run(args, *checked)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OptionError as e:  # a limit only the loaded model knows (its longest duration, its LoRAs)
        print(f"{PROG}: error: {describe(e)}", file=sys.stderr)
        return 2
    except (ModelLoadError, ValueError, TypeError, OSError, GenerationCancelled) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug, not a user's mistake: still one line (-v logs the traceback)
        log.info("traceback", exc_info=True)
        print(f"{PROG}: error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
