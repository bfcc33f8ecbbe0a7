"""Server settings and the `stable-audio serve` command line (argparse only: importing this is cheap)."""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("stable_audio_3.server")

LORA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_DATA_DIR = Path(os.environ.get("SA3_SERVER_DATA", Path.home() / ".cache" / "stable-audio-3" / "server"))


@dataclass
class ServerConfig:
    """Everything the HTTP server and its workers need; the defaults suit one GPU on localhost."""

    models: list[str] = field(default_factory=lambda: ["demo"])  # "name=path_or_hub_name" or just the path/name
    device: str | None = None  # None: the best available device
    data_dir: Path = DEFAULT_DATA_DIR
    api_key: str | None = None  # when set, every endpoint but /healthz needs "Authorization: Bearer <key>"
    max_queue: int = 64  # queued jobs (all models) before new requests get 429
    max_batch: int = 4  # items generated together in one batch (and the most items one request may ask for)
    batch_wait_s: float = 0.0  # after taking a job, wait this long for compatible ones to batch with it
    max_total_seconds: float = 600.0  # duration x items per request
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_seconds: float = 400.0
    job_timeout_s: float = 600.0  # a running batch past this is stopped at the next step and its jobs fail
    expiry_s: float = 24 * 3600.0  # finished jobs (record and files) are deleted after this
    run_workers: bool = True  # False: accept and serve jobs but run none (an API-only front end)
    recover_all_running: bool = True  # at start, requeue every 'running' job (one server per data dir)
    poll_interval_s: float = 0.5  # how often idle workers look for jobs queued by other processes
    noise_device: str | None = None  # "cpu": the same seed gives the same audio on every device
    # LoRA files requests may name: {name: path}. Callers name them; they never see or give paths.
    loras: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not isinstance(self.loras, dict):
            raise ValueError(f"loras={self.loras!r} is invalid; a dict {{name: path}} is required")
        for name, path in self.loras.items():
            if not isinstance(name, str) or not LORA_NAME.match(name):
                raise ValueError(f"LoRA name {name!r} is invalid; use 1-64 letters, digits, '.', '_' or '-'")
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise ValueError(f"LoRA {name!r}: path {path!r} is invalid; a file path is required")
        self.loras = {name: str(path) for name, path in self.loras.items()}
        for name in ("max_queue", "max_batch", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; a positive integer is required")
        for name in ("max_total_seconds", "max_upload_seconds", "job_timeout_s", "expiry_s", "poll_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; a positive number is required")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s={self.batch_wait_s!r} is invalid; a number >= 0 is required")


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
    """["drums=/loras/drums.safetensors", "/loras/piano.safetensors"] -> {name: path}; a bare path is named
    after its file (without the extension); names must be unique."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path, name = spec, Path(spec).stem
        if not name or not path:
            raise ValueError(f"--lora {spec!r} is invalid; use NAME=PATH")
        if not LORA_NAME.match(name):
            raise ValueError(f"--lora {spec!r}: the name {name!r} is invalid; use letters, digits, '.', '_' or '-'")
        if name in out:
            raise ValueError(f"--lora: the name {name!r} is given twice")
        out[name] = path
    return out


def check_lora_files(loras: dict[str, str]) -> None:
    """Every configured LoRA file exists (a ValueError naming the first that does not)."""
    for name, path in loras.items():
        if not Path(path).is_file():
            raise ValueError(f"--lora {name}={path}: file not found")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `serve` options; pass a subparser to add them to an existing command line."""
    p = parser or argparse.ArgumentParser(prog="stable-audio serve", description="HTTP API with a job queue")
    d = ServerConfig()
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="[NAME=]MODEL",
        help="model to serve (Hub name or local folder); repeat for several (default: demo)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get("SA3_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every endpoint but /healthz (env SA3_API_KEY)",
    )
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help=f"job database and audio (default {d.data_dir})")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="queued jobs before 429")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="items per batch and per request")
    p.add_argument(
        "--batch-wait",
        type=float,
        default=d.batch_wait_s,
        dest="batch_wait_s",
        help="seconds to wait for compatible jobs before running a batch",
    )
    p.add_argument(
        "--max-total-seconds", type=float, default=d.max_total_seconds, help="duration x items allowed per request"
    )
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20)
    p.add_argument("--max-upload-seconds", type=float, default=d.max_upload_seconds)
    p.add_argument(
        "--job-timeout",
        type=float,
        default=d.job_timeout_s,
        dest="job_timeout_s",
        help="seconds a batch may run before it is stopped",
    )
    p.add_argument(
        "--expiry",
        type=float,
        default=d.expiry_s / 3600,
        dest="expiry_hours",
        help="hours finished jobs and their audio are kept",
    )
    p.add_argument(
        "--lora",
        action="append",
        dest="loras",
        metavar="NAME=PATH",
        help='a LoRA file requests may use by NAME ("loras": [{"name": NAME, "strength": 1.0}]); repeatable',
    )
    p.add_argument("--noise-device", default=None, help="'cpu' draws noise on the CPU (same audio on every device)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        models=args.models or ["demo"],
        device=args.device,
        data_dir=args.data_dir,
        api_key=args.api_key or None,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s,
        max_total_seconds=args.max_total_seconds,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_upload_seconds=args.max_upload_seconds,
        job_timeout_s=args.job_timeout_s,
        expiry_s=args.expiry_hours * 3600,
        noise_device=args.noise_device,
        loras=lora_specs(args.loras or []),
    )


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the parsed `serve` options (blocks until Ctrl-C)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise SystemExit(f"the server needs extra packages: pip install 'stable-audio-3[server]' ({e})") from e
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        model_specs(config.models)
        check_lora_files(config.loras)
    except ValueError as e:
        raise SystemExit(f"stable-audio serve: {e}") from e
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the server", args.host)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m stable_audio_3.server [options]` and `stable-audio serve [options]`."""
    return run(build_parser().parse_args(argv))
