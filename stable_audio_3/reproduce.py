"""`stable-audio --from-metadata FILE`: the request, model, LoRAs and load options a file's metadata
records (see `output.file_record`), checked before any model loads, so that the command line can
generate the file again. On the same machine (same device, precision and package version) the
audio is bit for bit the same.

What the user may add: the input audio again (`--init-audio`, `--inpaint-audio`: checked against the
recorded digests), LoRA files again (`--lora-ckpt-path`, for LoRAs that were files rather than shipped
names), `--model` / `--model-config` when the model moved, load flags (another device) and the output
flags. Any other generation flag is refused: the file's request is regenerated as recorded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from . import output
from .request import FIELDS, LOAD_FIELDS, PYTHON_ONLY, GenerationRequest, LoadOptions, OptionError

ALLOWED = {"init_audio", "inpaint_audio"}  # request fields the user gives again


def given(p: argparse.ArgumentParser, args: argparse.Namespace, dest: str) -> bool:
    """Whether a flag was given (its value differs from the parser's default)."""
    return getattr(args, dest) != p.get_default(dest)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, describe: Callable[[OptionError], str],
               flag: Callable[[str], str]) -> tuple[GenerationRequest, LoadOptions, list[tuple[str, float]]]:
    """The recorded request, load options and LoRAs ([(name, strength)]) of `args.from_metadata`; sets
    args.model, args.model_config, args.lora_ckpt_path and args.item (the item to write). A refusal exits
    with code 2 naming the flag (the command line's `describe` and `flag` spell it)."""
    try:
        record = output.read_record(args.from_metadata)
    except ValueError as e:
        p.error(f"--from-metadata: {e}")
    for name in FIELDS:
        if name not in PYTHON_ONLY and name not in ALLOWED and given(p, args, name):
            p.error(f"{flag(name)} cannot be combined with --from-metadata: the file's request is regenerated as "
                    "recorded (leave it out, or generate without --from-metadata)")
    for dest, spelled in (("lora_strength", "--lora-strength"), ("lora_index", "--lora-index")):
        if given(p, args, dest):
            p.error(f"{spelled} cannot be combined with --from-metadata: the recorded strengths are used")
    audio = {name: getattr(args, name) for name in ALLOWED if getattr(args, name) is not None}
    try:
        request = GenerationRequest.from_json(record.get("request"), audio, output.audio_digests(audio)).verify()
    except OptionError as e:
        p.error(f"--from-metadata {args.from_metadata}: {describe(e)}")
    except (ValueError, OSError) as e:
        p.error(f"--from-metadata: {e}")
    if not given(p, args, "model"):
        args.model = record.get("model") or args.model
        args.model_config = args.model_config or record.get("model_config")
    args.item = int(record.get("item", 0))
    args.lora_ckpt_path = _lora_files(p, args, record.get("loras") or [])
    return request, _load_options(p, args, record.get("load") or {}), [
        (x["name"], float(x["strength"])) for x in record.get("loras") or []]


def _lora_files(p: argparse.ArgumentParser, args: argparse.Namespace, loras: list[dict]) -> list[str]:
    """What `load_lora` gets for the recorded LoRAs: the files given again (as many, in order), or the
    names of LoRAs shipped with the model."""
    files = list(args.lora_ckpt_path or [])
    names = [x["name"] for x in loras]
    if files:  # (a server's LoRA names are its own: only the number and the order can be checked)
        if len(files) != len(names):
            p.error(f"--lora-ckpt-path: the recorded request used {len(names)} LoRA(s) ({', '.join(names) or 'none'}); "
                    "give the same, in that order")
        missing = [f for f in files if not Path(f).is_file() and f not in _shipped(args.model)]
        if missing:
            p.error(f"--lora-ckpt-path: file not found: {missing[0]}")
        return files
    shipped = _shipped(args.model)
    for name in names:
        if name not in shipped:
            p.error(f"--from-metadata: the recorded request used the LoRA file {name!r}; give it again with "
                    "--lora-ckpt-path")
    return names


def _shipped(model: str) -> dict:
    from .loading import bundled_loras, local_model_folder

    return bundled_loras(local_model_folder(model))


def _load_options(p: argparse.ArgumentParser, args: argparse.Namespace, recorded: dict) -> LoadOptions:
    """The recorded load options; a load flag given on this command line wins (--dtype and --precision
    replace each other)."""
    values = {name: recorded.get(name, LOAD_FIELDS[name].default) for name in LOAD_FIELDS}
    for name in LOAD_FIELDS:
        if given(p, args, name):
            values[name] = getattr(args, name)
            if name in ("dtype", "precision"):
                values["precision" if name == "dtype" else "dtype"] = None
    try:
        return LoadOptions(**values).verify()
    except OptionError as e:
        p.error(f"--from-metadata: the recorded load options: {e}")
