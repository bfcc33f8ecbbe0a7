"""Configs, checkpoints and where they come from (local folders, files, the Hugging Face Hub).

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names the keys.
(The reference skips them silently; a half-loaded model makes noise, not an error message.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

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
DIFFUSION_MODELS = ("medium", "small-music", "small-sfx", "medium-base", "small-music-base", "small-sfx-base")
AUTOENCODER_MODELS = ("same-s", "same-l")
AE_PREFIX = "pretransform.model."


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message says what to do about it."""


@dataclass
class ModelFiles:
    config_path: Path
    checkpoint_path: Path
    config: dict


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
    return config


def read_safetensors(path: str | os.PathLike, prefix: str = "", strip: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file whose names start with `prefix` (prefix stripped)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):] if strip else key] = f.get_tensor(key)
        return out
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(
            f"checkpoint {path} is truncated or not a valid safetensors file ({e}); "
            "delete it and download it again"
        ) from e


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `module`; every tensor must exist, fit, and be used (bar `ignore_prefixes`)."""
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
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
    if any(t.is_meta for t in expected.values()):
        module.load_state_dict(state, strict=True, assign=True)
    else:
        module.load_state_dict(state, strict=True)


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


def resolve_model_files(name_or_path: str | os.PathLike, allowed_names: tuple[str, ...], *,
                        config: str | os.PathLike | None = None, revision: str | None = None,
                        token: str | None = None) -> ModelFiles:
    """Find config + checkpoint: an existing path wins; else one of `allowed_names` from the Hub."""
    path = Path(name_or_path)
    if path.exists():
        if path.is_dir():
            return _local_folder(path, config)
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{path}: expected a model folder or a .safetensors file")
        if config is None:
            raise ModelLoadError(
                f"{path} is a bare checkpoint: pass config= with a model name "
                f"({', '.join(allowed_names)}) or a model_config.json path"
            )
        config_path = Path(config) if Path(config).is_file() else None
        cfg = read_config(config_path) if config_path else _named_config(str(config), allowed_names)
        return ModelFiles(config_path or path.parent / "model_config.json", path, cfg)
    name = str(name_or_path)
    if name not in allowed_names:
        raise ModelLoadError(
            f"unknown model {name!r}: not an existing path and not a model name; "
            f"allowed names: {', '.join(allowed_names)}"
        )
    return _from_hub(name, revision=revision, token=token)


def _named_config(name: str, allowed: tuple[str, ...]) -> dict:
    if name not in allowed:
        raise ModelLoadError(f"config={name!r} is neither a config file nor a model name ({', '.join(allowed)})")
    return packaged_config(name)


def _local_folder(folder: Path, config: str | os.PathLike | None = None) -> ModelFiles:
    """A folder laid out like the Hub repo; `config=` may name another config file to use with it."""
    config_path = Path(config) if config is not None and Path(config).is_file() else folder / "model_config.json"
    ckpt = folder / "model.safetensors"
    for needed in (config_path, ckpt):
        if not needed.is_file():
            raise ModelLoadError(
                f"model folder {folder} lacks {needed.name}; a local model folder needs "
                "model_config.json and model.safetensors"
            )
    return ModelFiles(config_path, ckpt, read_config(config_path))


def _from_hub(name: str, revision: str | None, token: str | None) -> ModelFiles:
    repo = HUB_REPOS[name]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise ModelLoadError("huggingface_hub is required to download models") from e
    try:
        config_path = Path(hf_hub_download(repo, "model_config.json", revision=revision, token=token))
        ckpt = Path(hf_hub_download(repo, "model.safetensors", revision=revision, token=token))
    except Exception as e:
        raise ModelLoadError(hub_failure_message(name, repo, e)) from e
    return ModelFiles(config_path, ckpt, read_config(config_path))


def hub_failure_message(name: str, repo: str, error: Exception) -> str:
    kind = type(error).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    lines = [f"could not get model {name!r} from the Hugging Face Hub ({repo}): {kind}: {error}".rstrip()]
    if offline or "offline" in str(error).lower() or kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        lines.append("You are offline (or HF_HUB_OFFLINE=1) and the files are not in the local cache.")
    if kind in ("GatedRepoError", "RepositoryNotFoundError") or "401" in str(error) or "403" in str(error):
        lines.append(f"This model is gated: accept its licence at https://huggingface.co/{repo}, "
                     "then log in with `hf auth login` or set HF_TOKEN.")
    lines.append(f"Model page: https://huggingface.co/{repo} . To use files you already have, pass a folder "
                 "with model_config.json and model.safetensors (or a .safetensors file with config=).")
    return "\n".join(lines)
