"""The `stable-audio serve` command line (argparse only: importing this is cheap).

The top of the server's layers: it reads the options into a `ServerConfig` (settings.py) and starts
uvicorn on the app (app.py, imported only when the server starts). The model load options are made
from `LOAD_FIELDS`, so they have the names, choices and defaults of `stable-audio generate`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..request import LOAD_FIELDS, add_load_flags
from .settings import ServerConfig, check_lora_files, lora_specs, model_specs, shipped_loras

__all__ = ["ServerConfig", "build_parser", "config_from_args", "main", "run"]

log = logging.getLogger("stable_audio_3.server")


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
    add_load_flags(p.add_argument_group("model loading (as `stable-audio generate`)"))
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
    p.add_argument("--batch-wait", type=float, default=d.batch_wait_s, dest="batch_wait_s",
                   help="seconds to wait for compatible jobs before running a batch")
    p.add_argument("--max-total-seconds", type=float, default=d.max_total_seconds,
                   help="duration x items allowed per request")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20)
    p.add_argument("--max-upload-seconds", type=float, default=d.max_upload_seconds)
    p.add_argument("--job-timeout", type=float, default=d.job_timeout_s, dest="job_timeout_s",
                   help="seconds a batch may run before it is stopped")
    p.add_argument("--expiry", type=float, default=d.expiry_s / 3600, dest="expiry_hours",
                   help="hours finished jobs and their audio are kept")
    p.add_argument(
        "--lora",
        action="append",
        dest="loras",
        metavar="[NAME=]PATH_OR_SHIPPED",
        help="a LoRA requests may use by NAME (\"loras\": [{\"name\": NAME, \"strength\": 1.0}]): a file, or the "
        "name of a LoRA shipped with a served model (the demo's octave-up); repeatable",
    )
    p.add_argument("--noise-device", default=None, help="'cpu' draws noise on the CPU (same audio on every device)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        models=args.models or ["demo"],
        **{name: getattr(args, name) for name in LOAD_FIELDS},
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
        check_lora_files(config.loras, shipped_loras(config.models))
    except ValueError as e:
        raise SystemExit(f"stable-audio serve: {e}") from e
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the server", args.host)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m stable_audio_3.server [options]` and `stable-audio serve [options]`."""
    return run(build_parser().parse_args(argv))
