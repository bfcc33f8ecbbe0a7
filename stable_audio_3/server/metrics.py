"""Counters shared by the app and the workers, and their Prometheus text form for GET /metrics."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from .jobs import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, JobStore

HELP = {
    "sa3_jobs_submitted_total": "Jobs accepted.",
    "sa3_jobs_finished_total": "Jobs finished, by status.",
    "sa3_requests_refused_total": "Requests refused for load (429) or size (413).",
    "sa3_batches_total": "Generation runs (batches).",
    "sa3_batch_items_total": "Items generated (sum of batch sizes).",
    "sa3_generate_seconds_total": "Seconds spent generating.",
    "sa3_audio_seconds_total": "Seconds of audio delivered.",
}


class Metrics:
    """Thread-safe counters by (name, labels)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def snapshot(self) -> dict[tuple[str, tuple], float]:
        with self._lock:
            return dict(self.counters)

    def seconds_per_batch(self, default: float = 5.0) -> float:
        """The mean generation time so far (for Retry-After)."""
        snap = self.snapshot()
        batches = sum(v for (k, _), v in snap.items() if k == "sa3_batches_total")
        seconds = sum(v for (k, _), v in snap.items() if k == "sa3_generate_seconds_total")
        return seconds / batches if batches else default


def prometheus_text(metrics: Metrics, store: JobStore, models: list[str], workers_up: dict[str, bool],
                    started: float) -> str:
    """The Prometheus exposition format: job gauges from the store, worker liveness, the counters, uptime."""
    lines: list[str] = []

    def emit(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    counts = store.counts_by_status()
    emit("sa3_jobs", "gauge", "Jobs in the store by model and status.",
         [({"model": m, "status": s}, counts.get((m, s), 0))
          for m in models for s in (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)])
    emit("sa3_worker_up", "gauge", "1 when the model's worker thread is alive.",
         [({"model": name}, float(up)) for name, up in workers_up.items()])
    snap = metrics.snapshot()
    for name, help_text in HELP.items():
        emit(name, "counter", help_text, [(dict(labels), v) for (n, labels), v in sorted(snap.items()) if n == name])
    emit("sa3_uptime_seconds", "gauge", "Seconds since the server started.", [({}, time.time() - started)])
    return "\n".join(lines) + "\n"
