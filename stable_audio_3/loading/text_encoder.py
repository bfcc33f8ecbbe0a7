"""Which folder a model's T5Gemma text encoder comes from, and attaching it: the one place for that rule.

In order:
1. `text_encoder=`, a folder the caller names;
2. for a Hub model, the text-encoder folder of the model's own repo, fetched with the model (the repo
   the config names only when the model repo has none: medium-base's config names the gated medium
   repo, its own copy needs no licence);
3. next to the checkpoint: the prompt config's `model_path`, else `<checkpoint folder>/<subfolder>`
   (a model folder, a Hub snapshot, and the fixtures' `"repo_id": "."` all hold it there);
4. the repo the config names (`repo_id`, else `model_name`), downloaded.
Never relative to the working directory. The conditioner only receives the folder (`Conditioner.load_text_encoder`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models.checkpoint import ModelLoadError
from .configs import HUB_REPOS, TEXT_ENCODER_FILES, TEXT_ENCODER_SUBFOLDER, ModelFiles
from .hub import download, hub_failure_message, hub_missing_errors

if TYPE_CHECKING:
    from ..models.conditioning import Conditioner

log = logging.getLogger(__name__)

Downloader = Callable[[str, str | None], Path]


def _prompt_configs(config: dict) -> list[dict]:
    """The `config` sections of the model's T5Gemma prompt conditioners."""
    entries = config.get("model", {}).get("conditioning", {}).get("configs", [])
    return [e.get("config", {}) for e in entries if e.get("type") == "t5gemma"]


def download_text_encoder(repo: str, subfolder: str | None, revision: str | None, token: str | None) -> Path:
    """The T5Gemma files of `repo`/`subfolder` (cache or download); returns their folder."""
    prefix = f"{subfolder}/" if subfolder else ""
    paths = [download(repo, prefix + filename, revision, token) for filename in TEXT_ENCODER_FILES]
    return paths[0].parent


def fetch_hub_text_encoder(name: str, files: ModelFiles, revision: str | None, token: str | None) -> Path | None:
    """Step 2: the model repo's own text-encoder folder; None when the repo has none (step 4 then applies)."""
    prompts = _prompt_configs(files.config)
    if not prompts:
        return None
    subfolder = prompts[0].get("subfolder") or TEXT_ENCODER_SUBFOLDER
    not_in_repo, not_in_cache = hub_missing_errors()
    try:
        return download_text_encoder(HUB_REPOS[name], subfolder, revision, token)
    except not_in_cache as e:
        # Offline: the copy in the repo the config names will do if it happens to be cached.
        other = prompts[0].get("repo_id")
        if other and other not in (".", HUB_REPOS[name]):
            try:
                return download_text_encoder(other, subfolder, None, token)
            except Exception:
                pass
        error = e
    except not_in_repo:
        log.info("%s has no %s/ folder; using the text encoder its config names", HUB_REPOS[name], subfolder)
        return None
    except Exception as e:
        error = e
    raise ModelLoadError(
        hub_failure_message(name, HUB_REPOS[name], error, f"{subfolder}/ (the text encoder)", revision)
    ) from error


def text_encoder_downloader(revision: str | None = None, token: str | None = None) -> Downloader:
    """Step 4's `download(repo_id, subfolder) -> folder`, with the Hub's helpful errors."""

    def fetch(repo_id: str, subfolder: str | None) -> Path:
        try:
            return download_text_encoder(repo_id, subfolder, revision, token)
        except Exception as e:
            what = f"{subfolder}/ (the text encoder)" if subfolder else "the text encoder"
            raise ModelLoadError(hub_failure_message(repo_id, repo_id, e, what, revision)) from e

    return fetch


def is_text_encoder_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def resolve_text_encoder_dir(
    anchor: str | os.PathLike,
    cond_cfg: dict,
    text_encoder: str | os.PathLike | None = None,
    download: Downloader | None = None,
) -> Path:
    """Folder holding the T5Gemma files (config.json, model.safetensors, tokenizer*.json): steps 1, 3, 4.

    `anchor` is the checkpoint (or model config) whose folder holds the subfolder; `cond_cfg` the
    prompt conditioner's config (`repo_id`, `subfolder`, `model_path`). `download` is step 4's hook.
    """
    if text_encoder is not None:
        path = Path(text_encoder)
        if not is_text_encoder_dir(path):
            raise FileNotFoundError(f"text encoder folder {path} lacks config.json / model.safetensors")
        return path
    # abspath, not resolve(): in a Hub cache snapshot the file is a symlink into blobs/.
    base = Path(os.path.abspath(anchor)).parent
    subfolder = cond_cfg.get("subfolder")
    tried = []
    if cond_cfg.get("model_path"):
        tried.append(base / cond_cfg["model_path"])
    tried.append(base / subfolder if subfolder else base)
    for path in tried:
        if is_text_encoder_dir(path):
            return path
    repo_id = cond_cfg.get("repo_id") or cond_cfg.get("model_name")
    if download is not None and repo_id and repo_id != ".":
        return Path(download(repo_id, subfolder))
    raise FileNotFoundError(
        "T5Gemma text encoder not found (need config.json and model.safetensors); tried: "
        + ", ".join(str(p) for p in tried)
        + f". Pass text_encoder=<folder>, or put the files there (repo_id {repo_id!r}, subfolder {subfolder!r})."
    )


def attach_text_encoder(
    conditioner: Conditioner,
    files: ModelFiles | str | os.PathLike,
    text_encoder: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    token: str | None = None,
    offload: bool = False,
) -> None:
    """Find (steps 1-4) and load the T5Gemma of every prompt conditioner of `conditioner`.

    `files`: the resolved model files (a Hub model's fetched folder is step 2), or just the path of a
    checkpoint / model config whose folder anchors step 3. Any failure to find or read the folder
    becomes one ModelLoadError that says what to pass.
    """
    if isinstance(files, ModelFiles):
        anchor, fetched = files.checkpoint_path, files.text_encoder_dir
    else:
        anchor, fetched = Path(files), None
    given = text_encoder if text_encoder is not None else fetched
    fetch = text_encoder_downloader(None, token)
    try:
        folders = {
            key: resolve_text_encoder_dir(anchor, cond.source, given, fetch)
            for key, cond in conditioner.prompt_conditioners().items()
        }
        conditioner.load_text_encoder(folders, device, offload=offload)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ModelLoadError(
            f"text encoder (T5Gemma) could not be loaded: {e}\n"
            "Pass text_encoder=<folder with config.json, model.safetensors, tokenizer.json, tokenizer_config.json> "
            "(the t5gemma-b-b-ul2/ folder of any Stable Audio 3 repo), or put that folder next to the checkpoint."
        ) from e
