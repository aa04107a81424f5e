"""One writer per run directory. Two `bonsai train` on one output_dir would resume each other's
checkpoints and overwrite each other's logs; the second is refused, naming the first.

The lock is a file in the run dir (so it works on a filesystem shared by the nodes), created with
O_EXCL and holding who holds it: host, pid, SLURM job id, start time, and a heartbeat refreshed every
REFRESH_S while training runs. It is taken over, with a warning, only when its holder is certainly
gone: the same SLURM job (a requeue of this very job), the same host with that pid dead, or a heartbeat
older than STALE_S (a holder on another node that stopped refreshing).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from bonsai.config import ConfigError
from bonsai.errors import RunDirLocked
from bonsai.io import write_text_atomic
from bonsai.rundir import RunDir

REFRESH_S = 30.0
STALE_S = 120.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = RunDir(run_dir).lock
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                   "started": time.time(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise RunDirLocked; returns a warning when a dead holder's lock was taken over."""
        warning = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            holder = self._read()
            why_gone = self._gone(holder)
            if why_gone is None:
                raise RunDirLocked(f"{self.path.parent} is in use by {_describe(holder)}: one run per output_dir. "
                                   f"Wait for it, stop it, or use another train.output_dir") from None
            warning = f"{self.path}: taking over the lock of {_describe(holder)} ({why_gone})"
        except OSError as err:  # read-only filesystem, no permission, ...
            raise ConfigError(f"train.output_dir {self.path.parent}: cannot write there ({err.strerror}); "
                              f"choose a writable directory") from None
        self._write()
        if self._read().get("token") != self.me["token"]:  # another process took it over at the same moment
            raise RunDirLocked(f"{self.path.parent} was taken by {_describe(self._read())} just now")
        self._thread = threading.Thread(target=self._heartbeat, name="bonsai-run-lock", daemon=True)
        self._thread.start()
        return warning

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._read().get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)

    def _gone(self, holder: dict) -> str | None:
        """Why the holder is certainly gone, or None if it may be alive."""
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job_id") == job:
            return f"the same SLURM job {job}, requeued"
        if holder.get("host") == self.me["host"] and not _alive(int(holder.get("pid", 0))):
            return "its process is gone"
        try:  # an empty file is a lock being written (or a crash right after creating it): its mtime tells
            last = float(holder.get("refreshed") or holder.get("started") or self.path.stat().st_mtime)
        except OSError:
            return "its lock file vanished"
        age = time.time() - last
        if age > STALE_S:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}  # being written, or emptied by a crash: judged by the file's age

    def _write(self) -> None:
        write_text_atomic(self.path, json.dumps({**self.me, "refreshed": time.time()}))

    def _heartbeat(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if self._read().get("token") == self.me["token"]:
                self._write()


def _describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{job} (since {since})"


def live_holder(run_dir: Path) -> str | None:
    """Who is training in `run_dir` now (as `bonsai report` says it), or None when no live run holds it."""
    path = RunDir(run_dir).lock
    if not path.exists():
        return None
    probe = RunLock(run_dir)
    holder = probe._read()
    return None if probe._gone(holder) else _describe(holder)
