"""Where a model comes from (the built-in demo, the Hugging Face Hub, a folder, a single file) and how
its tensors get into the modules.

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names the keys, and
it is found from the file's header before any weight is read. (The reference skips such tensors
silently; a half-loaded model makes noise, not an error message.)

Tensors are read from the file straight into their final device and dtype, one at a time, into
modules built on the meta device: no random initialisation and no second copy of the weights.
Every problem a user can meet on the way (offline, no token, licence not accepted, unknown name,
truncated file) ends in one `ModelLoadError` whose message says what to do.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

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

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message says what to do about it."""


@dataclass
class ModelFiles:
    config_path: Path  # the config in use (a packaged one when config= names a model)
    checkpoint_path: Path  # its folder is where a text encoder subfolder is looked for
    config: dict
    repo: str | None = None  # the Hub repo the files came from
    text_encoder_dir: Path | None = None  # already fetched with the model (Hub names)


# -- configs -----------------------------------------------------------------------------------


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
    return config


def demo_folder() -> Path:
    return Path(str(resources.files("stable_audio_3").joinpath("assets", DEMO_MODEL)))


LORA_SUBFOLDER = "loras"


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


# -- device and precision ------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` picks cuda, then mps, then cpu; a named device must exist."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is invalid; allowed: None (auto), 'cpu', 'cuda', 'cuda:N', 'mps'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} is not available: this PyTorch has no usable CUDA; use 'cpu' or None")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' is not available on this machine; use 'cpu' or None")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r} is not supported; allowed: None (auto), 'cpu', 'cuda', 'mps'")
    return device


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, default: torch.dtype | None = None
) -> torch.dtype:
    """The compute dtype: the reference's fp16 on CUDA, fp32 elsewhere, unless `dtype` says otherwise."""
    if dtype is None:
        if default is not None:
            return default
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    if dtype in (torch.float32, torch.bfloat16, torch.float16):
        return dtype
    raise ValueError(
        f"dtype={dtype!r} is not supported; allowed: None (fp16 on CUDA, fp32 elsewhere), "
        "torch.float32, torch.bfloat16, torch.float16 (or 'float32', 'bfloat16', 'float16')"
    )


# -- safetensors, read lean ----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """A .safetensors file whose header is read (and checked against the file size) up front.

    `read` copies the selected tensors from disk into freshly allocated memory with plain reads
    (no memory map, so the page cache never counts as ours) and moves / casts each one before the
    next is read: the peak is the loaded model plus one tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"checkpoint not found: {self.path}")
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("file shorter than a safetensors header")
                header_len = int.from_bytes(head, "little")
                if header_len > size - 8:
                    raise ValueError(f"header claims {header_len} bytes, file holds {size}")
                header = json.loads(f.read(header_len))
            self.metadata = header.pop("__metadata__", None) or {}
            data_start = 8 + header_len
            self.tensors: dict[str, TensorInfo] = {}
            end = data_start
            for key, entry in header.items():
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                begin, stop = (int(o) for o in entry["data_offsets"])
                numel = 1
                for s in shape:
                    numel *= s
                if stop - begin != numel * torch.empty((), dtype=dtype).element_size():
                    raise ValueError(f"tensor {key!r}: byte range does not fit shape {shape} and dtype")
                self.tensors[key] = TensorInfo(dtype, shape, data_start + begin, stop - begin)
                end = max(end, data_start + stop)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ModelLoadError(_broken_file_message(self.path, f"unreadable header: {e}")) from e
        if end > size:
            raise ModelLoadError(_broken_file_message(self.path, f"it is truncated: {size} bytes, {end} needed"))

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shapes(self, keys: dict[str, str]) -> dict[str, tuple[int, ...]]:
        """{module key: shape} for a {module key: file key} mapping."""
        return {name: self.tensors[key].shape for name, key in keys.items()}

    def read(
        self,
        keys: dict[str, str],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """{module key: tensor} on `device`; floating tensors cast to `dtype` (None keeps the file's).

        A tensor that stays as stored is read straight into its own memory. One that is moved or
        cast passes through a single reused staging buffer (pinned for CUDA), so converting costs
        no more host memory than the largest tensor.
        """
        device = torch.device(device)
        items = sorted(keys.items(), key=lambda item: self.tensors[item[1]].start)  # sequential reads

        def target_dtype(info: TensorInfo) -> torch.dtype:
            return dtype if dtype is not None and info.dtype.is_floating_point else info.dtype

        staged = [
            self.tensors[k].nbytes
            for _, k in items
            if device.type != "cpu" or target_dtype(self.tensors[k]) != self.tensors[k].dtype
        ]
        staging = None
        if staged:
            staging = torch.empty(max(staged), dtype=torch.uint8, pin_memory=device.type == "cuda")
        out = {}
        with open(self.path, "rb", buffering=0) as f:
            for name, key in items:
                info = self.tensors[key]
                to = target_dtype(info)
                convert = device.type != "cpu" or to != info.dtype
                raw = staging[: info.nbytes] if convert else torch.empty(info.nbytes, dtype=torch.uint8)
                self._read_into(f, info, raw, key)
                tensor = raw.view(info.dtype).reshape(info.shape)
                if device.type == "mps" and to != info.dtype:
                    tensor = tensor.to(to)  # cast on the CPU: MPS has no float64 to cast from
                # A synchronous copy: the staging buffer is refilled right after.
                out[name] = tensor.to(device=device, dtype=to, copy=True) if convert else tensor
        return out

    def _read_into(self, f, info: TensorInfo, raw: torch.Tensor, key: str) -> None:
        if not info.nbytes:
            return
        f.seek(info.start)
        view, done = memoryview(raw.numpy()), 0
        while done < info.nbytes:
            got = f.readinto(view[done:])
            if not got:
                raise ModelLoadError(_broken_file_message(self.path, f"it ended inside tensor {key!r}"))
            done += got


def _broken_file_message(path: Path, problem: str) -> str:
    real = path.resolve()
    where = f"{path}" + (f" (stored as {real})" if real != path.absolute() else "")
    return (
        f"checkpoint {where} is truncated or not a valid safetensors file: {problem}. "
        f"Delete {real} and load the model again to download it anew (or copy the file again)."
    )


def read_safetensors(
    path: str | os.PathLike,
    prefix: str = "",
    strip: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file whose names start with `prefix` (prefix stripped)."""
    ckpt = SafetensorsFile(path)
    keys = {(k[len(prefix) :] if strip else k): k for k in ckpt.keys() if k.startswith(prefix)}
    return ckpt.read(keys, device, dtype)


# -- strict key and shape checks -----------------------------------------------------------------


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state(expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], what: str) -> None:
    """Every expected tensor present with its shape and nothing else, or a ModelLoadError naming the keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(given[k])}, model {tuple(expected[k])})"
        for k in set(given) & set(expected)
        if tuple(given[k]) != tuple(expected[k])
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


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_strict(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load `state` into `module`; every tensor must exist, fit, and be used (bar `ignore_prefixes`)."""
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    check_state(module_shapes(module), {k: tuple(v.shape) for k, v in state.items()}, what)
    if any(t.is_meta for t in expected.values()):
        module.load_state_dict(state, strict=True, assign=True)
    else:
        module.load_state_dict(state, strict=True)


def split_checkpoint_keys(keys: list[str], parts: dict[str, str], source: str) -> dict[str, dict[str, str]]:
    """{part: {module key: file key}}: each file key goes to the part whose prefix it starts with.

    A key that belongs to no part is an error naming it (a file from another model, or repackaged
    under other names), so that no tensor is ever silently dropped.
    """
    out: dict[str, dict[str, str]] = {part: {} for part in parts}
    stray = []
    for key in keys:
        for part, prefix in parts.items():
            if key.startswith(prefix):
                out[part][key[len(prefix) :]] = key
                break
        else:
            stray.append(key)
    if stray:
        allowed = ", ".join(f"{p}*" for p in parts.values())
        raise ModelLoadError(
            f"{source}: tensors outside {allowed}: {_describe(sorted(stray), 10)}; "
            "is this the official Stable Audio 3 checkpoint layout?"
        )
    return out


def load_part(
    module: nn.Module,
    ckpt: SafetensorsFile,
    keys: dict[str, str],
    what: str,
    device: torch.device,
    dtype: torch.dtype | None,
) -> nn.Module:
    """Check `keys` against a (meta) module from the header alone, then read them in place."""
    check_state(module_shapes(module), ckpt.shapes(keys), what)
    module.load_state_dict(ckpt.read(keys, device, dtype), strict=True, assign=True)
    return module.eval().requires_grad_(False)


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


# -- the T5Gemma text encoder --------------------------------------------------------------------


def t5gemma_encoder_keys(keys: list[str]) -> dict[str, str]:
    """{encoder module key: file key}: `model.encoder.*` stripped, decoder / LM head left out by name."""
    from .models.t5gemma import ENCODER_PREFIX, UNUSED_PREFIXES

    return {
        (k[len(ENCODER_PREFIX) :] if k.startswith(ENCODER_PREFIX) else k): k
        for k in keys
        if not k.startswith(UNUSED_PREFIXES)
    }


def load_t5gemma_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """The T5Gemma encoder of an HF folder, in its file's dtype, read straight onto `device`.

    Decoder and LM-head tensors (the real file holds the whole encoder-decoder) are skipped
    unread; any other foreign tensor is reported as unexpected.
    """
    from .models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig

    folder = Path(folder)
    ckpt = SafetensorsFile(folder / "model.safetensors")
    keys = t5gemma_encoder_keys(ckpt.keys())
    dtypes = {str(ckpt.tensors[k].dtype) for k in keys.values() if ckpt.tensors[k].dtype.is_floating_point}
    if len(dtypes) > 1:
        raise ModelLoadError(f"{ckpt.path}: T5Gemma encoder tensors have mixed dtypes {sorted(dtypes)}")
    try:
        cfg = T5GemmaEncoderConfig.from_file(folder / "config.json")
    except (ValueError, KeyError, OSError) as e:
        raise ModelLoadError(f"T5Gemma config {folder / 'config.json'} is unusable: {e}") from e
    with torch.device("meta"):
        model = T5GemmaEncoder(cfg)
    return load_part(model, ckpt, keys, f"T5Gemma encoder checkpoint {ckpt.path}", torch.device(device), None)


class OffloadedTextEncoder:
    """A text encoder kept in CPU memory that visits the compute device only to encode a batch.

    For GPUs short of memory: the T5Gemma (~0.6 GB in bf16) leaves the GPU after every encode,
    at the cost of one transfer each way per prompt batch. Same outputs as the plain encoder.
    """

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.model = inner.model

    @property
    def hidden_size(self) -> int:
        return self.inner.hidden_size

    def encode(self, prompts, device):
        try:
            return self.inner.encode(prompts, device)
        finally:
            if self.model.embed_tokens.weight.device.type != "cpu":
                self.model.to("cpu")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


# -- finding the files ---------------------------------------------------------------------------


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

    `with_text_encoder`: for a Hub model, also fetch the T5Gemma folder of the model's own repo.
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
        cached = _cached_host_checkpoint(name)
        if cached is not None:
            return cached
    files = _from_hub(name, revision=revision, token=token)
    if with_text_encoder:
        files.text_encoder_dir = _hub_text_encoder(name, files, revision, token)
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


# -- the Hugging Face Hub ------------------------------------------------------------------------


def _hub_cache_dir() -> str:
    """The Hub cache as huggingface_hub resolves it, but read now (tests and users change env vars)."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def _download(repo: str, filename: str, revision: str | None, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo,
            filename,
            revision=revision,
            token=token,
            cache_dir=_hub_cache_dir(),
            local_files_only=_offline(),
        )
    )


def _from_hub(name: str, revision: str | None, token: str | None) -> ModelFiles:
    repo = HUB_REPOS[name]
    filename = CONFIG_FILE
    try:
        config_path = _download(repo, CONFIG_FILE, revision, token)
        filename = CHECKPOINT_FILE
        ckpt = _download(repo, CHECKPOINT_FILE, revision, token)
    except Exception as e:
        raise ModelLoadError(hub_failure_message(name, repo, e, filename, revision)) from e
    return ModelFiles(config_path, ckpt, read_config(config_path), repo=repo)


def _cached_host_checkpoint(name: str) -> ModelFiles | None:
    """A full model already in the cache that holds this autoencoder (spares the SAME download)."""
    from huggingface_hub import try_to_load_from_cache

    for host in AUTOENCODER_HOSTS[name]:
        repo = HUB_REPOS[host]
        found = [try_to_load_from_cache(repo, f, cache_dir=_hub_cache_dir()) for f in (CONFIG_FILE, CHECKPOINT_FILE)]
        if all(isinstance(p, str) for p in found):
            log.info("%s: using the autoencoder of the cached %s checkpoint", name, repo)
            return ModelFiles(Path(found[0]), Path(found[1]), read_config(found[0]), repo=repo)
    return None


def _text_encoder_subfolder(config: dict) -> str:
    for entry in config.get("model", {}).get("conditioning", {}).get("configs", []):
        if entry.get("type") == "t5gemma":
            return entry.get("config", {}).get("subfolder") or TEXT_ENCODER_SUBFOLDER
    return TEXT_ENCODER_SUBFOLDER


def _hub_missing_errors() -> tuple[type[Exception], type[Exception]]:
    """(file not in the repo, file not in the cache) for old and new huggingface_hub alike."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
    except ImportError:  # huggingface_hub < 1.0: the local error subclasses the remote one
        from huggingface_hub.utils import EntryNotFoundError as RemoteEntryNotFoundError
        from huggingface_hub.utils import LocalEntryNotFoundError
    return RemoteEntryNotFoundError, LocalEntryNotFoundError


def download_text_encoder(repo: str, subfolder: str | None, revision: str | None, token: str | None) -> Path:
    """The T5Gemma files of `repo`/`subfolder` (cache or download); returns their folder."""
    prefix = f"{subfolder}/" if subfolder else ""
    paths = [_download(repo, prefix + filename, revision, token) for filename in TEXT_ENCODER_FILES]
    return paths[0].parent


def _hub_text_encoder(name: str, files: ModelFiles, revision: str | None, token: str | None) -> Path | None:
    """The model repo's own text-encoder folder; the config's `repo_id` only when the repo has none.

    (medium-base's config points at the gated medium repo; its own copy needs no licence.)
    """
    not_in_repo, not_in_cache = _hub_missing_errors()
    prompt = [e for e in files.config["model"].get("conditioning", {}).get("configs", []) if e.get("type") == "t5gemma"]
    if not prompt:
        return None
    subfolder = _text_encoder_subfolder(files.config)
    try:
        return download_text_encoder(HUB_REPOS[name], subfolder, revision, token)
    except not_in_cache as e:
        # Offline: the copy in the repo the config names will do if it happens to be cached.
        other = prompt[0].get("config", {}).get("repo_id")
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


def text_encoder_downloader(revision: str | None = None, token: str | None = None):
    """The `download(repo_id, subfolder)` hook of `Conditioner.load_text_encoder`, with helpful errors."""

    def download(repo_id: str, subfolder: str | None) -> Path:
        try:
            return download_text_encoder(repo_id, subfolder, revision, token)
        except Exception as e:
            what = f"{subfolder}/ (the text encoder)" if subfolder else "the text encoder"
            raise ModelLoadError(hub_failure_message(repo_id, repo_id, e, what, revision)) from e

    return download


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
            f"- The files are not in the local cache ({_hub_cache_dir()}) and the Hub was not reached "
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
