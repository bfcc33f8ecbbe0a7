"""The server's model registry and lifecycle: models loaded (or given), the LoRAs each one is offered,
the job store and one worker per model; started and stopped by the app's lifespan."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from .jobs import JobStore
from .metrics import Metrics
from .resolve import ModelLimits
from .settings import ServerConfig, check_lora_files, model_specs
from .worker import Worker

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

    def start(self) -> None:
        if not self.models:
            from .. import StableAudioModel

            load = self.config.load_options().kwargs()
            for name, source in model_specs(self.config.models).items():
                log.info("loading model %s from %s", name, source)
                self.models[name] = StableAudioModel.from_pretrained(source, **load)
        self.check_loras()
        self.store = JobStore(self.config.data_dir)
        if self.config.run_workers and self.config.recover_all_running:
            requeued = self.store.requeue_running()
            if requeued:
                log.info("requeued %d jobs interrupted by the last shutdown", requeued)
        self.store.expire(self.config.expiry_s)
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

    def retry_after(self) -> int:
        """A guess at when a queue slot frees up, from the average batch time so far."""
        return max(1, math.ceil(self.metrics.seconds_per_batch()))
