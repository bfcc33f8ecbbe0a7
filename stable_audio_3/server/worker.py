"""One worker thread per loaded model: takes queued jobs from the store, batches compatible ones, generates.

Each batch is one `GenerationRequest` run by `model.run`; its items are cut by the shared output module
(output.py) and written by storage.py (a full disk is told apart and named in the job's error). Batched jobs
keep their own per-item seeds, so each one's audio equals what it would get alone; a job whose int seed is
shared by several items runs alone (see resolve.batch_key). Cancellation and the per-job timeout act through
the step callback: it returns False and generation stops at the next sampling step. While a batch runs, a
heartbeat thread renews the lease of its jobs (jobs.py), so no other process takes over work still being done.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import GenerationCancelled
from ..audio import read_audio
from ..output import audio_digests, file_metadata, file_record, item_audio
from .jobs import CANCELLED, COMPLETED, FAILED, SHARED_GENERATOR, Job, JobStore, worker_identity
from .longform import is_long, run_long, write_long
from .metrics import Metrics
from .resolve import batch_request
from .settings import ServerConfig
from .storage import disk_full_message, encode_audio, is_disk_full

log = logging.getLogger("stable_audio_3.server")

MAINTENANCE_EVERY_S = 30.0
STALE_FILES_AFTER_S = 600.0  # a temporary file or a folder without a job this old is left over from a crash


class Worker:
    """Runs the queue of one model on its device until `stop()`."""

    def __init__(self, name: str, model, store: JobStore, config: ServerConfig, metrics: Metrics,
                 loras: dict[str, str] | None = None):
        self.name, self.model, self.store, self.config, self.metrics = name, model, store, config, metrics
        self.loras = dict(loras or {})  # the LoRA names offered for this model -> their files
        self.owner = worker_identity()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sa3-worker-{name}", daemon=True)
        self.busy_since: float | None = None
        self._lora_paths: list[str] | None = None  # the LoRA files this worker loaded, in order (None: unknown)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive() and self._lora_paths:  # hand the model back as it was given: no LoRA
            self.model.unload_lora()
            self._lora_paths = []

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        last_maintenance = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_maintenance > MAINTENANCE_EVERY_S:
                    self._maintenance()
                    last_maintenance = time.monotonic()
                if self.config.batch_wait_s > 0:
                    self._wait_for_company()
                jobs = self.store.claim_batch(self.name, self.config.max_batch, self.owner)
                if not jobs:
                    self._wake.wait(self.config.poll_interval_s)
                    self._wake.clear()
                    continue
                self.busy_since = time.time()
                try:
                    self._run(jobs)
                finally:
                    self.busy_since = None
            except Exception:  # the worker must outlive any single job or database hiccup
                log.exception("worker %s: unexpected error; continuing", self.name)
                self._stop.wait(1.0)

    def _maintenance(self) -> None:
        expired = self.store.expire(self.config.expiry_s)
        stale = 0
        if self.config.replica:  # a replica that died leaves 'running' jobs behind; they return when its lease ends
            stale = self.store.requeue_running(stale_after_s=self.config.lease_s)
        temps, folders = self.store.clean_up(older_than_s=STALE_FILES_AFTER_S)
        if expired or stale or temps or folders:
            log.info("worker %s: %d finished jobs expired, %d jobs with an expired lease requeued, %d temporary "
                     "files and %d folders without a job removed", self.name, expired, stale, temps, folders)

    def _wait_for_company(self) -> None:
        """Hold the oldest queued job up to batch_wait_s for compatible ones, unless its batch is already full
        or it cannot be batched at all."""
        while not self._stop.is_set():
            head = self.store.queue_head(self.name)
            if head is None:
                return
            created, batchable_items = head
            remaining = created + self.config.batch_wait_s - time.time()
            if remaining <= 0 or batchable_items is None or batchable_items >= self.config.max_batch:
                return
            self._wake.wait(min(remaining, 0.05))
            self._wake.clear()

    # -- LoRAs --------------------------------------------------------------------------------------
    def _apply_loras(self, loras: list[dict]) -> None:
        """Make the model's LoRAs those of the job: the files are (re)loaded only when the list of files
        changes; strengths are set every time. A job without LoRAs leaves none loaded."""
        paths = []
        for lora in loras:
            if lora["name"] not in self.loras:  # a job queued before a restart with other --lora options
                raise ValueError(f"LoRA {lora['name']!r} is not configured for this model (any more)")
            paths.append(self.loras[lora["name"]])
        if paths != self._lora_paths or len(self.model.loras) != len(paths):
            self.model.unload_lora()
            self._lora_paths = []
            if paths:
                self.model.load_lora(paths)  # checked first: on failure nothing is loaded
                log.info("worker %s: LoRAs loaded: %s", self.name, ", ".join(x["name"] for x in loras))
            self._lora_paths = paths
        for i, lora in enumerate(loras):
            self.model.set_lora_strength(float(lora["strength"]), lora_index=i)

    # -- one batch ---------------------------------------------------------------------------------
    def _run(self, jobs: list[Job]) -> None:
        ids = [j.id for j in jobs]
        batch_id = jobs[0].batch_id
        t0, wall0 = time.monotonic(), time.time()
        deadline = t0 + self.config.job_timeout_s
        state = {"timed_out": False}

        def on_step(step: int, total: int, x) -> bool | None:
            try:
                cancelled = self.store.progress(ids, step, total)
            except Exception as e:  # a full disk: the progress is not recorded, the generation goes on
                if not is_disk_full(e):
                    raise
                cancelled = set()
            if self._stop.is_set():  # shutting down: stop now, the jobs go back to the queue
                return False
            if time.monotonic() > deadline:
                state["timed_out"] = True
                return False
            if len(cancelled) == len(ids):
                return False
            return None

        lease_done = threading.Event()
        heartbeat = threading.Thread(target=self._renew, args=(batch_id, lease_done), daemon=True,
                                     name=f"sa3-lease-{self.name}")
        heartbeat.start()
        try:
            self._run_batch(jobs, on_step, state, t0, wall0)
        finally:
            lease_done.set()
            heartbeat.join()

    def _renew(self, batch_id: str, done: threading.Event) -> None:
        """Renew the batch's lease until it ends, whatever a step, a LoRA load or a write costs; a failed
        renewal (a full disk) is retried at the next beat."""
        while not done.wait(self.config.lease_s / 6):
            try:
                self.store.renew(batch_id, self.owner)
            except Exception as e:
                log.warning("worker %s: renewing the lease of batch %s failed: %s", self.name, batch_id, e)

    def _run_batch(self, jobs: list[Job], on_step, state: dict, t0: float, wall0: float) -> None:
        ids = [j.id for j in jobs]
        batch_id = jobs[0].batch_id
        first = jobs[0]
        p = first.params
        items = sum(j.num_items for j in jobs)
        log.info("worker %s: batch of %d jobs, %d items (%s)", self.name, len(jobs), items, ", ".join(ids))
        try:
            self._apply_loras(p.get("loras") or [])
            if is_long(p):  # a long-form piece: window by window, streamed into the job's folder (longform.py)
                result = run_long(self, first, on_step)
            else:
                inputs = {}
                for role, filename in first.inputs.items():  # uploads were decoded and re-encoded by the server
                    audio, sr = read_audio(self.store.file_path(first.id, filename))
                    inputs[role] = (sr, audio)
                request = batch_request([(j.params, j.seeds) for j in jobs], noise_device=self.config.noise_device,
                                        **inputs)
                if isinstance(request.seed, list):
                    result = self.model.run(request, callback=on_step)
                else:
                    with SHARED_GENERATOR:
                        result = self.model.run(request, callback=on_step)
        except GenerationCancelled:
            if self._stop.is_set() and not state["timed_out"]:
                self.store.requeue(jobs)
                log.info("worker %s: stopped; %d jobs back in the queue", self.name, len(jobs))
            elif state["timed_out"]:
                msg = f"timed out: the job ran longer than {self.config.job_timeout_s:g} s and was stopped"
                self._end(jobs, FAILED, msg)
            else:
                self._end(jobs, CANCELLED, None)
            return
        except ValueError as e:  # the Python API refused an argument the server let through
            self._end(jobs, FAILED, f"invalid request: {e}")
            return
        except Exception as e:
            if is_disk_full(e):
                self._end(jobs, FAILED, f"generation failed: {disk_full_message(e)}")
                return
            log.exception("worker %s: generation failed", self.name)
            self._end(jobs, FAILED, f"generation failed: {type(e).__name__}: {e}")
            return
        gen_s = time.monotonic() - t0
        self.metrics.inc("sa3_batches_total", model=self.name)
        self.metrics.inc("sa3_batch_items_total", items, model=self.name)
        self.metrics.inc("sa3_generate_seconds_total", gen_s, model=self.name)

        cancelled = self.store.cancel_requested(ids)
        offset = 0
        for job in jobs:
            indices = range(offset, offset + job.num_items)
            offset += job.num_items
            if job.id in cancelled:
                self._end([job], CANCELLED, None)
                continue
            try:
                outputs = self._write(job, result, indices, alone=len(jobs) == 1)
            except Exception as e:
                if is_disk_full(e):
                    log.error("worker %s: writing job %s failed: %s", self.name, job.id, e)
                    self._end([job], FAILED, f"writing the audio failed: {disk_full_message(e)}")
                else:
                    log.exception("worker %s: writing job %s failed", self.name, job.id)
                    self._end([job], FAILED, f"writing the audio failed: {type(e).__name__}: {e}")
                continue
            timings = {
                "queued_s": round(wall0 - job.created, 4),
                "generate_s": round(gen_s, 4),
                "total_s": round(time.time() - job.created, 4),
            }
            if self._record(job.id, batch_id, COMPLETED, outputs=outputs, timings=timings):
                self.store.remove_files(job.id, keep_outputs=True)
                self.metrics.inc("sa3_jobs_finished_total", model=self.name, status=COMPLETED)

    def _write(self, job: Job, result, indices: range, alone: bool = True) -> list[str]:
        """The job's items of a batch result, each cut to its duration, as 32-bit float WAVs holding exactly the
        generated samples (peaks above 0 dBFS too, when the job asked for clamp=false), with the metadata that
        reproduces them: the job's own request (not the batch's, which holds other jobs' prompts), its seeds,
        the model, LoRAs and load options (`output.file_record`); other formats are made from these on request."""
        if is_long(job.params):
            return write_long(self, job, result)
        loras = [(x["name"], float(x["strength"])) for x in job.params.get("loras") or []]
        own, seeds, first = result.request, result.seeds, indices.start
        if not alone:  # batched with other jobs (which have no audio inputs): this job's items alone
            own = batch_request([(job.params, job.seeds)], noise_device=self.config.noise_device).resolve(
                self.model.defaults)
            seeds, first = list(job.seeds), 0
        digests, load = audio_digests(own), self.model.load_options
        outputs = []
        for i, index in enumerate(indices):
            name = f"output_{i}.wav"
            audio = item_audio(result.audio, result.request, index, result.sample_rate)
            record = file_record(own, seeds, index - indices.start + first, self.name, loras, load, digests)
            metadata = file_metadata(own, seeds, index - indices.start + first, self.name, loras, ".wav", record)
            data = encode_audio(audio, result.sample_rate, ".wav", metadata, bit_depth=32, clamp=False)
            self.store.write(job.id, name, data, create=True)
            outputs.append(name)
            self.metrics.inc("sa3_audio_seconds_total", result.request.duration[index], model=self.name)
        return outputs

    def _end(self, jobs: list[Job], status: str, error: str | None) -> None:
        for job in jobs:
            if self._record(job.id, job.batch_id, status, error=error):  # False: another worker has it now
                self.store.remove_files(job.id, keep_outputs=False)
                self.metrics.inc("sa3_jobs_finished_total", model=self.name, status=status)

    def _record(self, job_id: str, batch_id: str | None, status: str, **fields) -> bool:
        """`store.finish`, retried while the disk is full (the lease is renewed meanwhile), so that no job stays
        'running' because its end could not be written; gives up only when the worker stops (the job is then
        requeued at the next start)."""
        while True:
            try:
                return self.store.finish(job_id, batch_id, status, **fields)
            except Exception as e:
                if not is_disk_full(e) or self._stop.is_set():
                    raise
                log.error("worker %s: recording the end of job %s failed (%s); retrying", self.name, job_id, e)
                self._stop.wait(1.0)
