"""What the package knows about models by name: the Hub repos, the file layout of a model folder, the
packaged configs, the built-in demo and the LoRAs a folder ships. No downloads, no torch."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..models.checkpoint import ModelLoadError

HUB_REPOS = {
    "small-music": "stabilityai/stable-audio-3-small-music",
    "small-sfx": "stabilityai/stable-audio-3-small-sfx",
    "medium": "stabilityai/stable-audio-3-medium",
    "small-music-base": "stabilityai/stable-audio-3-small-music-base",
    "small-sfx-base": "stabilityai/stable-audio-3-small-sfx-base",
    "medium-base": "stabilityai/stable-audio-3-medium-base",
    "same-s": "stabilityai/SAME-S",
    "same-l": "stabilityai/SAME-L",
}
# Repos whose licence must be accepted on the model page before the files can be downloaded.
GATED_MODELS = ("small-music", "small-sfx", "medium")
DIFFUSION_MODELS = ("medium", "small-music", "small-sfx", "medium-base", "small-music-base", "small-sfx-base")
AUTOENCODER_MODELS = ("same-s", "same-l")
DEMO_MODEL = "demo"
# Full models whose checkpoint already holds the autoencoder: reused from the cache when present.
AUTOENCODER_HOSTS = {"same-s": ("small-music", "small-sfx"), "same-l": ("medium",)}

DIT_PREFIX = "model.model."
AE_PREFIX = "pretransform.model."
CONDITIONER_PREFIX = "conditioner."
CONFIG_FILE = "model_config.json"
CHECKPOINT_FILE = "model.safetensors"
TEXT_ENCODER_SUBFOLDER = "t5gemma-b-b-ul2"
# What our tokenizer and encoder read from a T5Gemma folder (tokenizer.model is SentencePiece's, unused;
# tokenizer_config.json is required: its BOS/EOS flags decide the token ids).
TEXT_ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
LORA_SUBFOLDER = "loras"


@dataclass
class ModelFiles:
    config_path: Path  # the config in use (a packaged one when config= names a model)
    checkpoint_path: Path  # its folder is where a text encoder subfolder is looked for
    config: dict
    repo: str | None = None  # the Hub repo the files came from
    text_encoder_dir: Path | None = None  # already fetched with the model (Hub names)


def packaged_config_path(name: str) -> Path:
    return Path(str(resources.files("stable_audio_3").joinpath("configs", f"{name}.json")))


def packaged_config(name: str) -> dict:
    text = resources.files("stable_audio_3").joinpath("configs", f"{name}.json").read_text()
    return json.loads(text)


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"model config {path} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or "model_type" not in config or "model" not in config:
        raise ModelLoadError(f"model config {path} lacks 'model_type' / 'model'; is it a Stable Audio 3 config?")
    check_model_config(config, str(path))
    return config


# The fields the loader reads itself, by model type: (dotted path, kind, required). What a module's own
# config holds past these (a DiT's depth, ...) is checked when the module is built (see api).
_AE_FIELDS = (("latent_dim", "int", True), ("downsampling_ratio", "int", True), ("pretransform", "object", True),
              ("pretransform.config", "object", True), ("bottleneck", "object", True),
              ("bottleneck.config", "object", True), ("encoder", "object", True), ("encoder.config", "object", True),
              ("encoder.config.strides", "list", True), ("decoder", "object", True),
              ("decoder.config", "object", True))
_CONFIG_FIELDS = {
    "diffusion_cond_inpaint": (
        ("sample_rate", "int", False), ("sample_size", "int", False), ("model", "object", True),
        ("model.io_channels", "int", True), ("model.pretransform", "object", True),
        ("model.pretransform.config", "object", True),
        *((f"model.pretransform.config.{f}", kind, req) for f, kind, req in _AE_FIELDS),
        ("model.conditioning", "object", True), ("model.conditioning.configs", "list", True),
        ("model.diffusion", "object", True), ("model.diffusion.config", "object", True),
        ("model.diffusion.diffusion_objective", "str", False),
        ("model.diffusion.sampling_distribution_shift_options", "object", False)),
    "autoencoder": (("sample_rate", "int", False), ("model", "object", True),
                    *((f"model.{f}", kind, req) for f, kind, req in _AE_FIELDS)),
}
_KINDS = {"int": "a positive integer", "object": "a JSON object", "list": "a non-empty JSON list", "str": "a string"}


def check_model_config(config: dict, source: str) -> None:
    """The fields the loader reads are there and of the right type, else a `ModelLoadError` naming the
    file and the field (instead of a KeyError or a misleading limit later)."""
    from ..request import DEFAULT_SAMPLER, SAMPLERS

    for path, kind, required in _CONFIG_FIELDS.get(config.get("model_type"), ()):
        node, parts = config, path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                raise ModelLoadError(f"model config {source}: field {'.'.join(parts[:i])!r} must be a JSON object, "
                                     f"got {type(node).__name__} {_short(node)}")
            node = node.get(part, _MISSING)
            if node is _MISSING:
                break
        if node is _MISSING or (node is None and not required):
            if required:
                raise ModelLoadError(f"model config {source}: field {path!r} is missing; {_KINDS[kind]} is required "
                                     "(is this a Stable Audio 3 config?)")
            continue
        ok = {"int": lambda v: type(v) is int and v > 0, "object": lambda v: isinstance(v, dict),
              "list": lambda v: isinstance(v, list) and len(v) > 0, "str": lambda v: isinstance(v, str)}[kind](node)
        if not ok:
            raise ModelLoadError(f"model config {source}: field {path!r} is {_short(node)}; {_KINDS[kind]} is "
                                 "required")
    if config.get("model_type") != "diffusion_cond_inpaint":
        return
    ratio = config["model"]["pretransform"]["config"]["downsampling_ratio"]
    if config.get("sample_size", ratio) < ratio:
        raise ModelLoadError(f"model config {source}: field 'sample_size' is {config['sample_size']}; at least one "
                             f"latent ({ratio} samples, 'downsampling_ratio') is required")
    objective = config["model"]["diffusion"].get("diffusion_objective", "v")
    if objective not in DEFAULT_SAMPLER and config.get("default_sampler") not in SAMPLERS:
        raise ModelLoadError(f"model config {source}: field 'model.diffusion.diffusion_objective' is {objective!r}; "
                             f"allowed: {', '.join(map(repr, DEFAULT_SAMPLER))}")


_MISSING = object()


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, list, dict, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def autoencoder_section(config: dict, source: str) -> tuple[dict, str]:
    """The SAME autoencoder config and the checkpoint key prefix for a model config."""
    model_type = config.get("model_type")
    if model_type == "autoencoder":
        return config["model"], ""
    if model_type == "diffusion_cond_inpaint":
        pretransform = config["model"].get("pretransform", {})
        if pretransform.get("type") != "autoencoder":
            raise ModelLoadError(f"{source}: the model's pretransform is not an autoencoder")
        return pretransform["config"], AE_PREFIX
    raise ModelLoadError(
        f"{source}: model_type {model_type!r} is not an autoencoder; "
        "allowed: 'autoencoder' or 'diffusion_cond_inpaint' (a full model, whose autoencoder is used)"
    )


def demo_folder() -> Path:
    return Path(str(resources.files("stable_audio_3").joinpath("assets", DEMO_MODEL)))


def local_model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder of a model that needs no download (the demo, a local folder or checkpoint); else None."""
    path = Path(name_or_path)
    if path.exists():
        return path if path.is_dir() else path.parent
    return demo_folder() if str(name_or_path) == DEMO_MODEL else None


def bundled_loras(model_folder: Path | None) -> dict[str, Path]:
    """LoRA files shipped in a model folder's `loras/` (the demo's `octave-up`), by file stem."""
    folder = None if model_folder is None else Path(model_folder) / LORA_SUBFOLDER
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}
