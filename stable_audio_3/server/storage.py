"""The server's files on disk: audio encoded in memory and written atomically into a job's folder, the
disk-full test for errors, the data folder's lock and the clean-up of what a killed process left behind.

Files are written by Python (not by libsndfile), so a full disk surfaces as `OSError(ENOSPC)` and is told
apart from other failures; a write never creates a job's folder unless asked to, so a conversion racing a
DELETE cannot bring back a deleted folder.
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import time
import uuid
from pathlib import Path

TEMP_SUFFIX = ".part"  # temporary names: ".<name>.<random>.part" (dot files: never a name the server serves)
LOCK_NAME = "serve.lock"
SQLITE_FULL = 13


class DataDirBusy(RuntimeError):
    """Another process uses the data folder in a way that excludes this one."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the errors a full disk (or quota) gives: OSError ENOSPC/EDQUOT, SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)
    return False


def disk_full_message(exc: BaseException) -> str:
    return f"the server's disk is full ({exc}); delete finished jobs or free space, then retry"


def encode_audio(audio, sample_rate: int, suffix: str, metadata: dict[str, str] | None = None,
                 bit_depth: int | None = None, clamp: bool = True) -> bytes:
    """(C, T) audio -> the bytes of a file in the format of `suffix`, with the shared output module's codec
    options and peak ceiling (one gain, never clipping; `clamp=False` keeps the samples as they are)."""
    from ..audio import encode_to
    from ..output import PEAK_CEILING_DB, codec_options, limit_peak

    if clamp:
        audio, _ = limit_peak(audio, PEAK_CEILING_DB[suffix])
    data = audio.detach().float().cpu()
    data = (data.clamp(-1, 1) if clamp else data).numpy().T
    options = codec_options(suffix, bit_depth)
    buf = io.BytesIO()
    encode_to(buf, data, sample_rate, suffix[1:].upper(), metadata, **options)
    return buf.getvalue()


def download_name(job, index: int, fmt: str) -> str:
    """The file name a download of output `index` of `job` gets (Content-Disposition): the prompt, CFG, seed
    and a digest of the model and every setting, so two jobs' files are named alike only when made alike
    (`output.download_name`); `<job id>_<index>` when the job's settings do not say (a long-form piece)."""
    from ..output import download_name as name_of

    params = job.params or {}
    prompts, seeds = params.get("prompt"), job.seeds or []
    if not isinstance(prompts, list) or index >= len(prompts) or index >= len(seeds) or \
            not isinstance(params.get("cfg_scale"), (int, float)):
        return f"{job.id}_{index}.{fmt}"
    many = len(job.outputs) > 1
    return name_of(prompts[index], params["cfg_scale"], seeds[index], {"model": job.model, **params}, f".{fmt}",
                   index if many else None)


def write_file(folder: Path, name: str, data: bytes) -> Path:
    """Write `data` to folder/name through a temporary name in the same folder, then rename. The folder must
    exist (FileNotFoundError otherwise: it was deleted meanwhile); on any failure nothing is left behind."""
    tmp = folder / f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return folder / name


def stale_temp_files(folder: Path, older_than_s: float | None) -> list[Path]:
    """The temporary files under `folder` (all, or those not touched for `older_than_s` seconds)."""
    cutoff = None if older_than_s is None else time.time() - older_than_s
    out = []
    for path in folder.glob(f"*/.*{TEMP_SUFFIX}"):
        try:
            if cutoff is None or path.stat().st_mtime < cutoff:
                out.append(path)
        except FileNotFoundError:
            pass
    return out


class DataDirLock:
    """An advisory lock on `<data_dir>/serve.lock`: exclusive for a plain `serve` (the only process using the
    folder), shared for replicas. The kernel drops it when the process dies, even by kill -9."""

    def __init__(self, data_dir: Path, shared: bool):
        self.path = data_dir / LOCK_NAME
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no advisory locks here (Windows): one server per folder is up to the user
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            folder = self.path.parent
            if self.shared:
                raise DataDirBusy(f"--data-dir {folder} is in use by a `serve` started without --replica{holder}; "
                                  "stop it, or start every process on this folder with --replica") from None
            raise DataDirBusy(f"--data-dir {folder} is in use by another server process; stop it, use "
                              "another --data-dir, or start every process on this folder with --replica") from None
        if not self.shared:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
