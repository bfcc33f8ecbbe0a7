"""The Hugging Face Hub: downloads (or cache hits, offline) of a model's files, and the one error
message every failure ends in: what failed, why as far as we can tell, and the ways out (log in,
accept the licence, use local files)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..models.checkpoint import ModelLoadError
from .configs import (
    AUTOENCODER_HOSTS,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    GATED_MODELS,
    HUB_REPOS,
    TEXT_ENCODER_SUBFOLDER,
    ModelFiles,
    read_config,
)

log = logging.getLogger(__name__)


def hub_cache_dir() -> str:
    """The Hub cache as huggingface_hub resolves it, but read now (tests and users change env vars)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def download(repo: str, filename: str, revision: str | None, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo,
            filename,
            revision=revision,
            token=token,
            cache_dir=hub_cache_dir(),
            local_files_only=_offline(),
        )
    )


def from_hub(name: str, revision: str | None, token: str | None) -> ModelFiles:
    repo = HUB_REPOS[name]
    filename = CONFIG_FILE
    try:
        config_path = download(repo, CONFIG_FILE, revision, token)
        filename = CHECKPOINT_FILE
        ckpt = download(repo, CHECKPOINT_FILE, revision, token)
    except Exception as e:
        raise ModelLoadError(hub_failure_message(name, repo, e, filename, revision)) from e
    return ModelFiles(config_path, ckpt, read_config(config_path), repo=repo)


def cached_host_checkpoint(name: str) -> ModelFiles | None:
    """A full model already in the cache that holds this autoencoder (spares the SAME download)."""
    from huggingface_hub import try_to_load_from_cache

    for host in AUTOENCODER_HOSTS[name]:
        repo = HUB_REPOS[host]
        found = [try_to_load_from_cache(repo, f, cache_dir=hub_cache_dir()) for f in (CONFIG_FILE, CHECKPOINT_FILE)]
        if all(isinstance(p, str) for p in found):
            log.info("%s: using the autoencoder of the cached %s checkpoint", name, repo)
            return ModelFiles(Path(found[0]), Path(found[1]), read_config(found[0]), repo=repo)
    return None


def hub_missing_errors() -> tuple[type[Exception], type[Exception]]:
    """(file not in the repo, file not in the cache) for old and new huggingface_hub alike."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
    except ImportError:  # huggingface_hub < 1.0: the local error subclasses the remote one
        from huggingface_hub.utils import EntryNotFoundError as RemoteEntryNotFoundError
        from huggingface_hub.utils import LocalEntryNotFoundError
    return RemoteEntryNotFoundError, LocalEntryNotFoundError


def _has_token(token: str | None) -> bool:
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # pragma: no cover - a broken token file is not worth a second error
        return False


def hub_failure_message(
    name: str, repo: str, error: Exception, filename: str = CHECKPOINT_FILE, revision: str | None = None
) -> str:
    """What failed, why (as far as we can tell), and the three ways out: log in, accept, use local files."""
    kind = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    at = f" at revision {revision!r}" if revision else ""
    page = f"https://huggingface.co/{repo}"
    offline = kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
    why = kind if offline else f"{kind}: {text}"  # huggingface_hub's offline text is about its own arguments
    lines = [f"could not get {filename} of model {name!r} from the Hugging Face Hub ({repo}{at}): {why}"]
    gated = name in GATED_MODELS or repo in (HUB_REPOS[m] for m in GATED_MODELS)
    if offline:
        lines.append(
            f"- The files are not in the local cache ({hub_cache_dir()}) and the Hub was not reached "
            "(HF_HUB_OFFLINE=1 is set, or there is no network). Download once while online, e.g. "
            f"`hf download {repo}`, or unset HF_HUB_OFFLINE."
        )
    elif kind == "GatedRepoError":
        lines.append(f"- This model is gated and your account has no access yet: accept its licence at {page}.")
    elif kind == "RepositoryNotFoundError":
        lines.append(f"- The repo was not found, or it is private/gated and no valid token was sent. Check {page}.")
    elif kind == "RevisionNotFoundError":
        lines.append(f"- Revision {revision!r} does not exist in {repo}; leave revision=None for the latest.")
    elif kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        lines.append(f"- {repo}{at} has no file {filename}.")
    if gated:
        lines.append(
            f"- {repo} is gated: open {page} while logged in and accept the licence (Stability AI and Gemma terms)."
        )
    login = "a token was found" if _has_token(None) else "no Hugging Face token was found"
    lines.append(
        f"- To log in ({login}): run `hf auth login`, or set the HF_TOKEN environment variable, or pass token='hf_...'."
    )
    lines.append(
        f"- To use files you already have: pass a local folder laid out like {page} ({CONFIG_FILE}, "
        f"{CHECKPOINT_FILE}, {TEXT_ENCODER_SUBFOLDER}/), or a single .safetensors file with config='<model name>' "
        "and text_encoder='<T5Gemma folder>'."
    )
    return "\n".join(lines)
