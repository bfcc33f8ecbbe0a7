"""Ray Serve deployment: the same HTTP API, one replica per GPU, autoscaling between bounds.

Every replica loads the model(s) once and runs the same FastAPI app with its own worker threads;
all replicas share one data folder (SQLite job queue + audio files), so any replica accepts a job,
any idle replica runs it, and any replica answers `GET /v1/jobs/{id}`. On one node that folder is a
local path; across nodes it must be a shared file system that supports SQLite locking.

    from ray import serve
    from stable_audio_3.server.ray import build_app

    serve.run(build_app(models=["small-music"], data_dir="/shared/sa3", min_replicas=1,
                        max_replicas=8, loras={"drums": "/shared/loras/drums.safetensors"}), route_prefix="/")

Ray is imported only here, and only when `build_app` / `deployment_class` are called.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from .settings import ServerConfig


@cache
def deployment_class():
    """The replica class, wrapped by `serve.ingress` with an app built at replica start."""
    from ray import serve

    @serve.ingress()
    class StableAudioServer:
        """One replica: loads the models on its own device and serves the HTTP API."""

        def __init__(self, config: ServerConfig):
            self.config = config

        def __serve_build_asgi_app__(self):
            from .app import create_app

            return create_app(self.config)

    return StableAudioServer


def build_app(
    models: list[str] | None = None,
    data_dir: str | Path | None = None,
    *,
    num_replicas: int | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    target_ongoing_requests: float = 8.0,
    num_gpus: float = 1.0,
    num_cpus: float = 1.0,
    name: str = "stable-audio-3",
    **config,
):
    """A Ray Serve application for `serve.run`.

    - `num_replicas`: a fixed count; otherwise Ray autoscales between `min_replicas` and `max_replicas`.
    - `num_gpus` per replica (1: one replica per GPU; 0 for CPU replicas).
    - `config`: any other `ServerConfig` field (api_key, max_queue, max_batch, job_timeout_s, dtype, ...), e.g.
      `loras={"drums": "/shared/loras/drums.safetensors", "octave-up": "octave-up"}` (the LoRA names requests
      may use: a file, or a LoRA shipped with a served model; every replica checks at start that each one
      exists and fits a model it serves, as `stable-audio serve --lora` does).
    """
    from ray import serve

    settings = ServerConfig(
        models=models or ["demo"],
        replica=True,  # the replicas share data_dir and its queue
        **config,
        **({"data_dir": Path(data_dir)} if data_dir is not None else {}),
    )
    if settings.device is None and num_gpus == 0:
        settings.device = "cpu"
    options: dict = {"name": name, "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": num_cpus}}
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing_requests,
        }
    return serve.deployment(deployment_class(), **options).bind(settings)
