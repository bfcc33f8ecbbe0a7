"""The `stable-audio serve` command line (argparse only: importing this is cheap).

The top of the server's layers: it reads the options into a `ServerConfig` (settings.py), opens the data
folder, binds the port and loads the models, then starts uvicorn on the app (app.py, imported only when the
server starts). Every bad option is one line and exit 2, every unusable folder, port or model one line and
exit 1, before uvicorn starts. The model load options are made from `LOAD_FIELDS`, so they have the names,
choices and defaults of `stable-audio generate`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from pathlib import Path

from ..request import LOAD_FIELDS, add_load_flags
from .settings import LOCAL_HOSTS, ServerConfig, check_lora_files, lora_specs, model_specs, shipped_loras

__all__ = ["ServerConfig", "build_parser", "config_from_args", "main", "run"]

log = logging.getLogger("stable_audio_3.server")
PROG = "stable-audio serve"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like the server's other startup errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind: type, low: float, low_open: bool = False):
    """An argparse type: a finite `kind` >= low (or > low)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid; a finite number {'>' if low_open else '>='} "
                                             f"{low:g} is required")
        return value

    return parse


def port(text: str) -> int:
    value = number(int, 1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; a port is 1..65535")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The `serve` options; pass a subparser to add them to an existing command line."""
    p = parser or OneLineParser(prog=PROG, description="HTTP API with a job queue")
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
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--api-key",
        default=os.environ.get("SA3_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every endpoint but /healthz and /docs (env SA3_API_KEY; "
        "an empty key is refused)",
    )
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts", metavar="NAME",
                   help="a Host name the server answers to, besides localhost, 127.0.0.1, ::1 and --host; "
                   "repeatable; '*' for any (DNS rebinding protection off)")
    p.add_argument("--allowed-origin", action="append", dest="allowed_origins", metavar="ORIGIN",
                   help="a web app's origin (https://app.example[:port]) whose pages may call the API; "
                   "requests from other sites' pages are refused; repeatable")
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help=f"job database and audio (default {d.data_dir})")
    p.add_argument("--replica", action="store_true",
                   help="share --data-dir with other processes started with --replica (one queue, each job run "
                   "once); without it a second server on the same folder is refused")
    p.add_argument("--max-queue", type=number(int, 1), default=d.max_queue, help="queued jobs before 429")
    p.add_argument("--max-batch", type=number(int, 1), default=d.max_batch, help="items per batch and per request")
    p.add_argument("--batch-wait", type=number(float, 0), default=d.batch_wait_s, dest="batch_wait_s",
                   help="seconds to wait for compatible jobs before running a batch")
    p.add_argument("--max-total-seconds", type=number(float, 0, True), default=d.max_total_seconds,
                   help="duration x items allowed per request")
    p.add_argument("--max-upload-mb", type=number(float, 0, True), default=d.max_upload_bytes / 2**20)
    p.add_argument("--max-upload-seconds", type=number(float, 0, True), default=d.max_upload_seconds)
    p.add_argument("--max-upload-samples", type=number(int, 1), default=d.max_upload_values, dest="max_upload_values",
                   help="decoded samples x channels of all the audio files of one request (checked before "
                   f"and while decoding; default {d.max_upload_values}: two 400 s 48 kHz stereo files)")
    p.add_argument("--job-timeout", type=number(float, 0, True), default=d.job_timeout_s, dest="job_timeout_s",
                   help="seconds a batch may run before it is stopped")
    p.add_argument("--expiry", type=number(float, 0, True), default=d.expiry_s / 3600, dest="expiry_hours",
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


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host names served: the localhost names, the bound address (and this machine's names when bound to
    every address), and --allowed-host."""
    names = list(LOCAL_HOSTS)
    if host in WILDCARD_HOSTS:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(host)
    names += extra
    return list(dict.fromkeys(n.strip().lower().strip("[]") for n in names if n.strip()))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The settings of `serve`; a ValueError names the option at fault."""
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key (or SA3_API_KEY) is empty; give a key, or unset both to serve without one")
    return ServerConfig(
        models=args.models or ["demo"],
        **{name: getattr(args, name) for name in LOAD_FIELDS},
        data_dir=args.data_dir,
        api_key=args.api_key,
        allowed_hosts=allowed_hosts(args.host, args.allowed_hosts or []),
        allowed_origins=args.allowed_origins or [],
        replica=args.replica,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        batch_wait_s=args.batch_wait_s,
        max_total_seconds=args.max_total_seconds,
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_upload_seconds=args.max_upload_seconds,
        max_upload_values=args.max_upload_values,
        job_timeout_s=args.job_timeout_s,
        expiry_s=args.expiry_hours * 3600,
        noise_device=args.noise_device,
        loras=lora_specs(args.loras or []),
    )


def check_model_paths(config: ServerConfig) -> None:
    """A --model that is written as a path must exist (a name is looked up when the model loads)."""
    for source in model_specs(config.models).values():
        looks_like_path = source.startswith((".", "~")) or "/" in source or os.sep in source
        if looks_like_path and not Path(source).expanduser().exists():
            raise ValueError(f"--model {source}: no such folder")


def bind(host: str, port_number: int) -> socket.socket:
    """The listening socket, bound now so that a port in use is a one-line error rather than uvicorn's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port_number, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise RuntimeError(f"--host {host}: cannot listen there ({e.strerror or e})") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port_number}: {e.strerror or e}") from e
    return sock


def fail(message: object, code: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the error's own layout
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the parsed `serve` options (blocks until Ctrl-C); 2 for a bad option, 1 for a folder,
    port or model that cannot be used."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        return fail(f"the server needs extra packages: pip install 'stable-audio-3[server]' ({e})", 1)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        check_model_paths(config)
        check_lora_files(config.loras, shipped_loras(config.models))
    except ValueError as e:
        return fail(e, 2)
    if args.host not in LOCAL_HOSTS and not config.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the server", args.host)
    app = create_app(config)
    state = app.state.server
    try:
        state.open_store()  # first: a busy or unusable folder is refused before the model loads
        sock = bind(args.host, args.port)
        try:
            state.load_models()
        except BaseException:
            sock.close()
            raise
    except (RuntimeError, OSError, ValueError) as e:
        state.stop()
        return fail(e, 1)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m stable_audio_3.server [options]` and `stable-audio serve [options]`."""
    return run(build_parser().parse_args(argv))
