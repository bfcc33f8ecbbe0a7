"""Finding a model's files: an existing path (a folder laid out like the Hub repo, or a single
checkpoint with `config=`), the built-in demo, or a model name fetched from the Hub."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..models.checkpoint import ModelLoadError
from .configs import (
    AUTOENCODER_HOSTS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEMO_MODEL,
    TEXT_ENCODER_SUBFOLDER,
    ModelFiles,
    demo_folder,
    packaged_config,
    packaged_config_path,
    read_config,
)
from .hub import cached_host_checkpoint, from_hub
from .text_encoder import fetch_hub_text_encoder


def resolve_model_files(
    name_or_path: str | os.PathLike,
    allowed_names: tuple[str, ...],
    *,
    config: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | None = None,
    with_text_encoder: bool = False,
) -> ModelFiles:
    """Find config + checkpoint: an existing path wins; else one of `allowed_names` (demo or the Hub).

    `with_text_encoder`: for a Hub model, also fetch the T5Gemma folder of the model's own repo now
    (step 2 of the rule in `text_encoder`), so that a missing file fails before any weight is read.
    """
    path = Path(name_or_path)
    if path.exists():
        if path.is_dir():
            return _local_folder(path, config, allowed_names)
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path}: expected a model folder or a .safetensors file")
        if config is None:
            raise ModelLoadError(
                f"{path} is a single checkpoint file: pass config= with a model name "
                f"({', '.join(n for n in allowed_names if n != DEMO_MODEL)}) or a model_config.json path"
            )
        config_path, cfg = _config_override(config, allowed_names)
        return ModelFiles(config_path, path, cfg)
    name = str(name_or_path)
    if name not in allowed_names:
        close = difflib.get_close_matches(name, allowed_names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelLoadError(
            f"unknown model {name!r}: not an existing path and not a model name; "
            f"allowed names: {', '.join(allowed_names)}.{hint}"
        )
    if name == DEMO_MODEL:
        folder = demo_folder()
        if not (folder / CHECKPOINT_FILE).is_file():
            raise ModelLoadError(
                f"the built-in demo model is not installed (expected {folder / CHECKPOINT_FILE}). "
                f"Name a model instead ({', '.join(n for n in allowed_names if n != DEMO_MODEL)}) "
                "or pass a local model folder."
            )
        return _local_folder(folder, config, allowed_names)
    if name in AUTOENCODER_HOSTS and revision is None:
        cached = cached_host_checkpoint(name)
        if cached is not None:
            return cached
    files = from_hub(name, revision=revision, token=token)
    if with_text_encoder:
        files.text_encoder_dir = fetch_hub_text_encoder(name, files, revision, token)
    return files


def _config_override(config: str | os.PathLike, allowed: tuple[str, ...]) -> tuple[Path, dict]:
    """`config=`: a config file path, or a model name whose config the package ships."""
    if Path(config).is_file():
        return Path(config), read_config(config)
    name = str(config)
    if name not in allowed or name == DEMO_MODEL:
        names = ", ".join(n for n in allowed if n != DEMO_MODEL)
        raise ModelLoadError(f"config={name!r} is neither a config file nor a model name ({names})")
    return packaged_config_path(name), packaged_config(name)


def _local_folder(folder: Path, config: str | os.PathLike | None, allowed: tuple[str, ...]) -> ModelFiles:
    """A folder laid out like the Hub repo; `config=` may name another config (file or model name)."""
    ckpt = folder / CHECKPOINT_FILE
    if config is not None:
        config_path, cfg = _config_override(config, allowed)
    else:
        config_path = folder / CONFIG_FILE
        cfg = None
    for needed in [ckpt] if cfg is not None else [config_path, ckpt]:
        if not needed.is_file():
            raise ModelLoadError(
                f"model folder {folder} lacks {needed.name}; a local model folder needs "
                f"{CONFIG_FILE} and {CHECKPOINT_FILE} (and a {TEXT_ENCODER_SUBFOLDER}/ text encoder folder)"
            )
    return ModelFiles(config_path, ckpt, cfg if cfg is not None else read_config(config_path))
