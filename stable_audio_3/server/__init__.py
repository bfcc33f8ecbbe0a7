"""HTTP serving: a FastAPI app with a SQLite-backed job queue (`create_app`), the `serve` command line
(`main`), and a Ray Serve deployment in `stable_audio_3.server.ray` (imported only when used).

Layers, each importing only those below it: settings (ServerConfig); storage (atomic writes, disk-full
errors, the data folder's lock); jobs (SQLite store, leases); schema (the JSON shapes, made from
`GenerationRequest`); guard (Host, cross-site and key checks); docs (the offline /docs page); resolve
(request -> job -> request); metrics; worker; uploads (bodies and audio files); state (models, LoRAs,
workers); app (routes); config (the command line) and ray (the Ray Serve deployment) on top.

Needs the `server` extra: pip install 'stable-audio-3[server]'.
"""

from __future__ import annotations

from .config import build_parser, main, run
from .settings import ServerConfig

__all__ = ["ServerConfig", "build_parser", "create_app", "main", "run"]


def __getattr__(name: str):
    # FastAPI is imported only when the app is built, so `stable-audio --help` stays fast without the extra.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'stable_audio_3.server' has no attribute {name!r}")
