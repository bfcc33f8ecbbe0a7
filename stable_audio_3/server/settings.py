"""Server settings (`ServerConfig`) and the parsing of `--model` / `--lora` specs.

The bottom of the server's layers: it imports nothing else from `server/`, so the app, the workers,
the command line and the Ray deployment can all depend on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..request import LoadOptions

LORA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
DEFAULT_DATA_DIR = Path(os.environ.get("SA3_SERVER_DATA", Path.home() / ".cache" / "stable-audio-3" / "server"))


@dataclass
class ServerConfig:
    """Everything the HTTP server and its workers need; the defaults suit one GPU on localhost."""

    models: list[str] = field(default_factory=lambda: ["demo"])  # "name=path_or_hub_name" or just the path/name
    device: str | None = None  # None: the best available device
    dtype: str | None = None  # the load options, as `stable-audio` and `StableAudioModel.from_pretrained` take them
    attention_padding: str = "exclude"
    precision: str | None = None
    compile: bool = False
    data_dir: Path = DEFAULT_DATA_DIR
    api_key: str | None = None  # when set, every endpoint but /healthz and /docs needs "Authorization: Bearer <key>"
    # Host header names served (DNS rebinding: a page's own name resolving to this machine); "*" for any
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))
    # origins ("https://app.example:8443") of web apps whose pages may call the API (CORS); others are refused
    allowed_origins: list[str] = field(default_factory=list)
    max_queue: int = 64  # queued jobs (all models) before new requests get 429
    max_batch: int = 4  # items generated together in one batch (and the most items one request may ask for)
    batch_wait_s: float = 0.0  # after taking a job, wait this long for compatible ones to batch with it
    max_total_seconds: float = 600.0  # duration x items per request
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_seconds: float = 400.0
    # decoded samples x channels of all the files of one request (two 400 s 48 kHz stereo files; 307 MB as
    # float32): checked from each file's header before decoding and enforced while decoding
    max_upload_values: int = 2 * 400 * 48_000 * 2
    job_timeout_s: float = 600.0  # a running batch past this is stopped at the next step and its jobs fail
    expiry_s: float = 24 * 3600.0  # finished jobs (record and files) are deleted after this
    run_workers: bool = True  # False: accept and serve jobs but run none (an API-only front end)
    # False: the only server on data_dir (an exclusive lock; at start every 'running' job is requeued, its
    # owner being gone); True: one of several replicas sharing it, which requeue only expired leases
    replica: bool = False
    lease_s: float = 30.0  # a running job's lease; its worker renews it every lease_s / 6
    poll_interval_s: float = 0.5  # how often idle workers look for jobs queued by other processes
    noise_device: str | None = None  # "cpu": the same seed gives the same audio on every device
    # LoRAs requests may name: {name: a file path, or the name of a LoRA shipped with a served model}.
    # Callers name them; they never see or give paths.
    loras: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not isinstance(self.loras, dict):
            raise ValueError(f"loras={self.loras!r} is invalid; a dict {{name: path}} is required")
        for name, path in self.loras.items():
            if not isinstance(name, str) or not LORA_NAME.match(name):
                raise ValueError(f"LoRA name {name!r} is invalid; use 1-64 letters, digits, '.', '_' or '-'")
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise ValueError(f"LoRA {name!r}: path {path!r} is invalid; a file path or a shipped LoRA's name")
        self.loras = {name: str(path) for name, path in self.loras.items()}
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError(f"api_key={self.api_key!r} is invalid; a non-empty key is required (or none: no key)")
        self.allowed_hosts = [str(h).strip().lower().strip("[]").rstrip(".") for h in self.allowed_hosts]
        for host in self.allowed_hosts:
            if not host or any(c in host for c in "/ @?#"):
                raise ValueError(f"allowed host {host!r} is invalid; a host name or address (or '*') is required")
        self.allowed_origins = [str(o).strip().lower().rstrip("/") for o in self.allowed_origins]
        for origin in self.allowed_origins:
            if not ORIGIN.match(origin):
                raise ValueError(f"allowed origin {origin!r} is invalid; scheme://host[:port] is required, "
                                 "e.g. https://app.example")
        for name in ("max_queue", "max_batch", "max_upload_bytes", "max_upload_values"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; a positive integer is required")
        for name in ("max_total_seconds", "max_upload_seconds", "job_timeout_s", "expiry_s", "poll_interval_s",
                     "lease_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; a positive number is required")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s={self.batch_wait_s!r} is invalid; a number >= 0 is required")
        self.load_options()  # an OptionError (a ValueError) for a bad dtype, padding or precision choice

    def load_options(self) -> LoadOptions:
        """How every served model is loaded, checked as the CLI checks it."""
        return LoadOptions.from_namespace(self)


def model_specs(specs: list[str]) -> dict[str, str]:
    """["small=/models/sa3-small", "stable-audio-3-medium"] -> {name: source}; names must be unique."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            source = spec
            name = Path(spec.rstrip("/")).name or spec
        if not name or not source:
            raise ValueError(f"--model {spec!r} is invalid; use NAME=PATH_OR_HUB_NAME or PATH_OR_HUB_NAME")
        if name in out:
            raise ValueError(f"--model: the name {name!r} is given twice; name them with NAME=...")
        out[name] = source
    return out


def lora_specs(specs: list[str]) -> dict[str, str]:
    """["drums=/loras/drums.safetensors", "/loras/piano.safetensors", "octave-up"] -> {name: path or shipped
    name}; a bare path is named after its file (without the extension), a bare shipped LoRA after itself."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec).stem
        if not name or not path:
            raise ValueError(f"--lora {spec!r} is invalid; use NAME=PATH, PATH or the name of a shipped LoRA")
        if not LORA_NAME.match(name):
            raise ValueError(f"--lora {spec!r}: the name {name!r} is invalid; use letters, digits, '.', '_' or '-'")
        if name in out:
            raise ValueError(f"--lora: the name {name!r} is given twice")
        out[name] = path
    return out


def shipped_loras(models: list[str]) -> dict[str, dict[str, Path]]:
    """{model name: {LoRA name: file}} of the LoRAs shipped in the served models' folders (the demo's
    `octave-up`); models fetched from the Hub by name are not looked up (that would download them)."""
    from ..loading import bundled_loras, local_model_folder

    return {name: bundled_loras(local_model_folder(source)) for name, source in model_specs(models).items()}


def check_lora_files(loras: dict[str, str], shipped: dict[str, dict[str, Path]] | None = None) -> None:
    """Every configured LoRA is a file or a LoRA shipped with a served model (`shipped`, as from
    `shipped_loras`); a ValueError names the first that is neither."""
    names = sorted({lora for per_model in (shipped or {}).values() for lora in per_model})
    for name, path in loras.items():
        if Path(path).is_file() or path in names:
            continue
        spec = path if path == name else f"{name}={path}"
        if os.sep in path or "/" in path or path.endswith(".safetensors"):
            raise ValueError(f"--lora {spec}: file not found")
        shipped_text = ", ".join(names) or "none"
        raise ValueError(f"--lora {spec}: {path!r} is neither a file nor a LoRA shipped with the served models "
                         f"(shipped: {shipped_text})")
