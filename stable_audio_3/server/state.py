"""The server's model registry and lifecycle: models loaded (or given), the LoRAs each one is offered,
the job store (with the data folder's lock) and one worker per model.

`serve` calls `open_store` and `load_models` before uvicorn starts, so that a bad folder or model is one
line on the terminal; the app's lifespan does whatever is left (TestClient, Ray Serve) and starts the workers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from .jobs import JobStore
from .metrics import Metrics
from .resolve import ModelLimits
from .settings import ServerConfig, check_lora_files, model_specs
from .storage import DataDirLock
from .worker import STALE_FILES_AFTER_S, Worker

log = logging.getLogger("stable_audio_3.server")


class ServerState:
    """What the endpoints share: settings, the job store, the loaded models and their workers."""

    def __init__(self, config: ServerConfig, models: dict[str, Any] | None):
        self.config = config
        self.models: dict[str, Any] = dict(models or {})
        self.workers: dict[str, Worker] = {}
        self.metrics = Metrics()
        self.store: JobStore | None = None
        self.started = time.time()
        # model name -> {LoRA name: its file} of the configured LoRAs that fit it
        self.model_loras: dict[str, dict[str, str]] = {}
        self.lock: DataDirLock | None = None
        self._loras_checked = False

    def load_models(self) -> None:
        """Load the configured models (unless given) and check the LoRAs against them."""
        if not self.models:
            from .. import StableAudioModel

            load = self.config.load_options().kwargs()
            for name, source in model_specs(self.config.models).items():
                log.info("loading model %s from %s", name, source)
                try:
                    self.models[name] = StableAudioModel.from_pretrained(source, **load)
                except Exception as e:
                    raise RuntimeError(f"--model {name}={source}: cannot load it: {e}") from e
        if not self._loras_checked:
            self.check_loras()
            self._loras_checked = True

    def open_store(self) -> None:
        """Open the data folder: its lock (exclusive for a plain server, shared for replicas), the job database,
        and the recovery of what the last run left (running jobs whose owner is gone, temporary files)."""
        if self.store is not None:
            return
        folder = self.config.data_dir
        if folder.exists() and not folder.is_dir():
            raise RuntimeError(f"--data-dir {folder}: is a file; a folder is required")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeError(f"--data-dir {folder}: cannot create it ({e.strerror or e})") from e
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RuntimeError(f"--data-dir {folder}: not writable by this user")
        lock = DataDirLock(folder, shared=self.config.replica)
        lock.acquire()
        try:
            store = JobStore(folder)
        except Exception as e:
            lock.release()
            raise RuntimeError(f"--data-dir {folder}: cannot open the job database ({e})") from e
        self.lock, self.store = lock, store
        if self.config.run_workers:
            # alone on the folder, every 'running' job's owner is gone; replicas wait for a lease to expire
            requeued = store.requeue_running(stale_after_s=self.config.lease_s if self.config.replica else None)
            if requeued:
                log.info("requeued %d jobs interrupted by the last shutdown", requeued)
        temps, folders = store.clean_up(older_than_s=STALE_FILES_AFTER_S if self.config.replica else None)
        if temps or folders:
            log.info("removed %d temporary files and %d folders without a job left by an interrupted run",
                     temps, folders)
        store.expire(self.config.expiry_s)

    def start(self) -> None:
        self.open_store()
        self.load_models()
        if self.config.run_workers:
            for name, model in self.models.items():
                worker = Worker(name, model, self.store, self.config, self.metrics, self.model_loras.get(name))
                self.workers[name] = worker
                worker.start()
        log.info("serving models %s from %s", ", ".join(self.models), self.config.data_dir)

    def check_loras(self) -> None:
        """Load each configured LoRA onto each model once (then unload it): a LoRA is offered for the models it
        fits; a file that is missing or unreadable, a shipped name no model ships, or a LoRA that fits none of
        the models stops the server with the reason."""
        from ..models.lora import LoraError

        shipped = {name: dict(model.bundled_loras) for name, model in self.models.items()}
        check_lora_files(self.config.loras, shipped)
        self.model_loras = {name: {} for name in self.models}
        for lora, spec in self.config.loras.items():
            problems = []
            for name, model in self.models.items():
                path = spec if Path(spec).is_file() else shipped[name].get(spec)
                if path is None:
                    problems.append(f"model {name!r}: it ships no LoRA named {spec!r}")
                    continue
                model.unload_lora()
                try:
                    model.load_lora([path])
                except LoraError as e:
                    problems.append(f"model {name!r}: {e}")
                    log.warning("LoRA %s (%s) does not fit model %s; not offered for it: %s", lora, spec, name, e)
                else:
                    self.model_loras[name][lora] = str(path)
                finally:
                    model.unload_lora()
            if len(problems) == len(self.models):
                raise ValueError(f"--lora {lora}={spec} cannot be used with any model served:\n" + "\n".join(problems))
        if self.config.loras:
            log.info("LoRAs offered: %s", {m: list(names) for m, names in self.model_loras.items()})

    def limits(self, name: str) -> ModelLimits:
        return ModelLimits.of(name, self.models[name], self.model_loras.get(name, {}))

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def retry_after(self) -> int:
        """A guess at when a queue slot frees up, from the average batch time so far."""
        return max(1, math.ceil(self.metrics.seconds_per_batch()))
