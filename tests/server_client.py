"""Run one job through the HTTP API in-process: the real app, its worker thread and job store."""

from __future__ import annotations

import time
from pathlib import Path


def run_job(model, body: dict, tmp_path: Path, timeout_s: float = 120.0) -> dict:
    """POST /v1/generate with `body` for `model` (a loaded StableAudioModel), wait for the job, return it."""
    from fastapi.testclient import TestClient

    from stable_audio_3.server.app import create_app
    from stable_audio_3.server.settings import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path / "server-data", poll_interval_s=0.05), models={"m": model})
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server answers to
        created = client.post("/v1/generate", json={"model": "m", **body})
        assert created.status_code == 202, created.text
        url = created.json()["url"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = client.get(url).json()
            if job["status"] in ("completed", "failed", "cancelled"):
                assert job["status"] == "completed", job
                return job
            time.sleep(0.05)
    raise AssertionError(f"job {url} did not finish in {timeout_s} s")
