"""Job records in SQLite and their audio on disk, so that nothing is lost when the server restarts.

The database is the queue: workers claim queued jobs inside an IMMEDIATE transaction, so several
processes (Ray Serve replicas) can share one data folder. Files live in `<data_dir>/files/<job id>/`
under names the server chooses; every file is written to a temp name and renamed into place (storage.py).
A running job carries a lease: its worker renews the heartbeat while the batch runs, and only a job whose
lease has expired (or whose owner is known to be gone) is put back in the queue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .storage import is_disk_full, stale_temp_files, write_file

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# An int seed shared by a batch seeds torch's global generators; workers of other models (threads of this
# process) must not draw from them meanwhile. Per-item seeds use their own generators and need no lock.
SHARED_GENERATOR = threading.Lock()
STREAM_FILE = "stream.pcm"  # a running long-form job's audio so far (server/longform.py); gone once it ends

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    inputs TEXT NOT NULL,
    seeds TEXT NOT NULL,
    num_items INTEGER NOT NULL,
    batch_key TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    heartbeat REAL,
    owner TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    batch_jobs INTEGER,
    batch_items INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    outputs TEXT,
    timings TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, model, seq);
"""


@dataclass
class Job:
    id: str
    model: str
    status: str
    params: dict
    inputs: dict  # role -> file name inside the job's folder
    seeds: list[int]
    num_items: int
    batch_key: str | None
    created: float
    started: float | None
    finished: float | None
    step: int
    total_steps: int
    cancel_requested: bool
    batch_id: str | None
    batch_jobs: int | None
    batch_items: int | None
    attempts: int
    owner: str | None  # the worker that ran (or runs) it: "host:pid:tag"
    error: str | None
    outputs: list[str]
    timings: dict

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            model=row["model"],
            status=row["status"],
            params=json.loads(row["params"]),
            inputs=json.loads(row["inputs"]),
            seeds=json.loads(row["seeds"]),
            num_items=row["num_items"],
            batch_key=row["batch_key"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            step=row["step"],
            total_steps=row["total_steps"],
            cancel_requested=bool(row["cancel_requested"]),
            batch_id=row["batch_id"],
            batch_jobs=row["batch_jobs"],
            batch_items=row["batch_items"],
            attempts=row["attempts"],
            owner=row["owner"],
            error=row["error"],
            outputs=json.loads(row["outputs"] or "[]"),
            timings=json.loads(row["timings"] or "{}"),
        )


def new_job_id() -> str:
    return uuid.uuid4().hex


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobStore:
    """Thread-safe access to `<data_dir>/jobs.sqlite3` and `<data_dir>/files/`."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # autocommit mode; writes that must be atomic across processes use BEGIN IMMEDIATE
        self._db = sqlite3.connect(
            self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rollback(self) -> None:
        """Undo an open transaction; SQLite has already undone it after some errors (a full disk), and a
        second ROLLBACK would hide the real error behind "no transaction is active"."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- files ---------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):  # ids are ours; never build a path from anything else
            raise ValueError(f"invalid job id {job_id!r}")
        return self.files_dir / job_id

    def file_path(self, job_id: str, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"invalid file name {name!r}")
        return self.job_dir(job_id) / name

    def write(self, job_id: str, name: str, data: bytes, create: bool = False) -> Path:
        """Store a file of a job atomically. The job's folder is made only when `create` is set (a new job's
        uploads, a running job's outputs); otherwise a folder deleted meanwhile gives FileNotFoundError."""
        path = self.file_path(job_id, name)
        if create:
            path.parent.mkdir(exist_ok=True)
        return write_file(path.parent, name, data)

    # -- records -------------------------------------------------------------------------------
    def add(
        self,
        job_id: str,
        model: str,
        params: dict,
        inputs: dict,
        seeds: list[int],
        batch_key: str | None,
        max_queued: int | None = None,
    ) -> Job | None:
        """Insert a queued job; None (nothing inserted) when `max_queued` jobs are already waiting."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_queued is not None:
                    (queued,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()
                    if queued >= max_queued:
                        self._db.execute("ROLLBACK")
                        return None
                self._db.execute(
                    "INSERT INTO jobs (id, model, status, params, inputs, seeds, num_items, batch_key, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        model,
                        QUEUED,
                        json.dumps(params),
                        json.dumps(inputs),
                        json.dumps(seeds),
                        len(seeds),
                        batch_key,
                        time.time(),
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def count(self, status: str, model: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM jobs WHERE status = ?", [status]
        if model is not None:
            query += " AND model = ?"
            args.append(model)
        with self._lock:
            return self._db.execute(query, args).fetchone()[0]

    def queue_position(self, job: Job) -> int:
        """How many queued jobs of the same model are ahead of this one."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND model = ? "
                "AND seq < (SELECT seq FROM jobs WHERE id = ?)",
                (QUEUED, job.model, job.id),
            ).fetchone()[0]

    def queue_head(self, model: str) -> tuple[float, int | None] | None:
        """(creation time of the oldest queued job of `model`, queued items that could share its batch, or
        None when it cannot be batched); None when nothing is queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT created, batch_key FROM jobs WHERE status = ? AND model = ? ORDER BY seq LIMIT 1",
                (QUEUED, model),
            ).fetchone()
            if row is None:
                return None
            if row["batch_key"] is None:
                return row["created"], None
            (items,) = self._db.execute(
                "SELECT SUM(num_items) FROM jobs WHERE status = ? AND model = ? AND batch_key = ?",
                (QUEUED, model, row["batch_key"]),
            ).fetchone()
        return row["created"], items

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        marks = ",".join("?" * len(job_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids
            ).fetchall()
        return {r["id"] for r in rows}

    def claim_batch(self, model: str, max_items: int, owner: str) -> list[Job]:
        """Atomically move the oldest queued job of `model`, and queued jobs with its batch key (oldest
        first, up to `max_items` items in all), to 'running'. Empty when nothing is queued."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                first = self._db.execute(
                    "SELECT * FROM jobs WHERE status = ? AND model = ? ORDER BY seq LIMIT 1", (QUEUED, model)
                ).fetchone()
                if first is None:
                    self._db.execute("COMMIT")
                    return []
                rows, items = [first], first["num_items"]
                if first["batch_key"] is not None:
                    more = self._db.execute(
                        "SELECT * FROM jobs WHERE status = ? AND model = ? AND batch_key = ? AND seq > ? ORDER BY seq",
                        (QUEUED, model, first["batch_key"], first["seq"]),
                    ).fetchall()
                    for row in more:
                        if items + row["num_items"] <= max_items:
                            rows.append(row)
                            items += row["num_items"]
                now, batch_id = time.time(), uuid.uuid4().hex
                for row in rows:
                    self._db.execute(
                        "UPDATE jobs SET status = ?, started = ?, heartbeat = ?, owner = ?, batch_id = ?, "
                        "batch_jobs = ?, batch_items = ?, attempts = attempts + 1, step = 0 WHERE id = ?",
                        (RUNNING, now, now, owner, batch_id, len(rows), items, row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return [j for j in (self.get(r["id"]) for r in rows) if j is not None]

    def renew(self, batch_id: str, owner: str) -> int:
        """Renew the lease of a running batch (its heartbeat); returns how many of its jobs are still ours."""
        with self._lock:
            return self._db.execute(
                "UPDATE jobs SET heartbeat = ? WHERE batch_id = ? AND owner = ? AND status = ?",
                (time.time(), batch_id, owner, RUNNING),
            ).rowcount

    def progress(self, job_ids: list[str], step: int, total: int) -> set[str]:
        """Record a sampling step (also the owner's heartbeat); returns the ids whose cancel was asked."""
        marks = ",".join("?" * len(job_ids))
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET step = ?, total_steps = ?, heartbeat = ? WHERE id IN ({marks})",
                (step, total, time.time(), *job_ids),
            )
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids
            ).fetchall()
        return {r["id"] for r in rows}

    def finish(
        self,
        job_id: str,
        batch_id: str | None,
        status: str,
        *,
        error: str | None = None,
        outputs: list[str] | None = None,
        timings: dict | None = None,
    ) -> bool:
        """Record the end of a run; ignored when the job is no longer this batch's (requeued meanwhile)."""
        with self._lock:
            return bool(
                self._db.execute(
                    "UPDATE jobs SET status = ?, finished = ?, error = ?, outputs = ?, timings = ? "
                    "WHERE id = ? AND status = ? AND batch_id IS ?",
                    (
                        status,
                        time.time(),
                        error,
                        json.dumps(outputs or []),
                        json.dumps(timings or {}),
                        job_id,
                        RUNNING,
                        batch_id,
                    ),
                ).rowcount
            )

    def cancel(self, job_id: str) -> Job | None:
        """Queued: cancelled at once. Running: flagged; the worker stops at the next step."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, cancel_requested = 1 WHERE id = ? AND status = ?",
                (CANCELLED, time.time(), job_id, QUEUED),
            )
            self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?", (job_id, RUNNING))
        job = self.get(job_id)
        if job is not None and job.status == CANCELLED:
            self.remove_files(job_id, keep_outputs=False)
        return job

    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record and files. On a full disk the files go first, so that the record's
        deletion finds room (a DELETE is how space is freed through the API)."""

        def delete_row() -> int:
            with self._lock:
                return self._db.execute(
                    "DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)", (job_id, *FINISHED)
                ).rowcount

        try:
            deleted = delete_row()
        except sqlite3.Error as e:
            if not is_disk_full(e) or self.get(job_id) is None or self.get(job_id).status not in FINISHED:
                raise
            self.remove_files(job_id, keep_outputs=False)
            deleted = delete_row()
        if deleted:
            self.remove_files(job_id, keep_outputs=False)
        return bool(deleted)

    def requeue(self, jobs: list[Job]) -> None:
        """Put the jobs of an interrupted batch back in the queue (their place in it is kept)."""
        with self._lock:
            for job in jobs:
                self._db.execute(
                    "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ? ELSE ? END, "
                    "finished = CASE cancel_requested WHEN 1 THEN ? END, owner = NULL, batch_id = NULL, step = 0 "
                    "WHERE id = ? AND status = ? AND batch_id IS ?",
                    (CANCELLED, QUEUED, time.time(), job.id, RUNNING, job.batch_id),
                )

    def requeue_running(self, stale_after_s: float | None = None) -> int:
        """Put interrupted jobs back in the queue: all running ones (None), or those whose worker has not
        reported for `stale_after_s` seconds (a replica that died)."""
        query = (
            "UPDATE jobs SET status = CASE cancel_requested WHEN 1 THEN ? ELSE ? END, "
            "finished = CASE cancel_requested WHEN 1 THEN ? END, owner = NULL, batch_id = NULL, step = 0 "
            "WHERE status = ?"
        )
        args: list = [CANCELLED, QUEUED, time.time(), RUNNING]
        if stale_after_s is not None:
            query += " AND heartbeat < ?"
            args.append(time.time() - stale_after_s)
        with self._lock:
            return self._db.execute(query, args).rowcount

    def expire(self, older_than_s: float) -> int:
        """Delete finished jobs (records and files) that finished more than `older_than_s` ago."""
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE finished < ? AND status IN (?, ?, ?)", (cutoff, *FINISHED)
            ).fetchall()
            self._db.execute("DELETE FROM jobs WHERE finished < ? AND status IN (?, ?, ?)", (cutoff, *FINISHED))
        for row in rows:
            self.remove_files(row["id"], keep_outputs=False)
        return len(rows)

    def remove_files(self, job_id: str, keep_outputs: bool) -> None:
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            return
        if not keep_outputs:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for path in [*folder.glob("input_*"), folder / STREAM_FILE]:
            path.unlink(missing_ok=True)

    def clean_up(self, older_than_s: float | None) -> tuple[int, int]:
        """Remove what interrupted writes leave behind: temporary files, and job folders with no record (an
        upload whose job was never recorded). `older_than_s` None: everything (no other process writes
        here); otherwise only what has not been touched for that long. Returns (temp files, folders)."""
        temps = stale_temp_files(self.files_dir, older_than_s)
        for path in temps:
            path.unlink(missing_ok=True)
        cutoff = None if older_than_s is None else time.time() - older_than_s
        folders = [p for p in self.files_dir.iterdir() if p.is_dir() and JOB_ID.match(p.name)]
        known: set[str] = set()
        for i in range(0, len(folders), 500):
            chunk = [p.name for p in folders[i:i + 500]]
            with self._lock:
                rows = self._db.execute(f"SELECT id FROM jobs WHERE id IN ({','.join('?' * len(chunk))})",
                                        chunk).fetchall()
            known.update(r["id"] for r in rows)
        orphans = 0
        for folder in folders:
            try:
                if folder.name in known or (cutoff is not None and folder.stat().st_mtime >= cutoff):
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            orphans += 1
        return len(temps), orphans

    def counts_by_status(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT model, status, COUNT(*) AS n FROM jobs GROUP BY model, status").fetchall()
        return {(r["model"], r["status"]): r["n"] for r in rows}
