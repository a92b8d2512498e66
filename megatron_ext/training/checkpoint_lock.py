"""One writer per checkpoint directory: ``<checkpoint.save>/writer.lock``.

Two runs saving into one directory (a job submitted twice) replace each other's checkpoints
and tracker. The writing rank takes the lock at start-up by creating the file exclusively,
with its host, PID, process start time and Slurm job in it, and refreshes its mtime every
minute (a heartbeat). A second run finds it and is refused, unless the holder is gone:

- same host: its process no longer runs (PID and start time, so a reused PID is no match);
- an earlier attempt of the same Slurm job (a requeue: SLURM_RESTART_COUNT is higher now);
- another host, whose processes cannot be seen from here: no heartbeat for STALE_AFTER_S, or
  its Slurm job has ended by Slurm's own account (asked only within the same Slurm cluster: a
  job of another cluster sharing the file system is unknown here, not ended).

The lock is removed when the process exits (also on errors); a killed process leaves it for
one of the rules above. Taking over a stale lock is logged.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from megatron_ext.processes import process_alive, slurm_job_ended, start_time, this_host
from megatron_ext.training.checkpoint_files import DISK_FULL_ERRNOS, CheckpointError

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
# A lock file is written right after it is created; one still unreadable after this long
# belongs to a process that died in between.
_UNWRITTEN_GRACE_S = 30.0
OWN = "it is this process's own"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: Optional[float]
    slurm_job: Optional[str]
    slurm_restart: int
    slurm_cluster: Optional[str] = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(host=this_host(), pid=os.getpid(), started=start_time(os.getpid()),
                   slurm_job=os.environ.get("SLURM_JOB_ID"),
                   slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                   slurm_cluster=os.environ.get("SLURM_CLUSTER_NAME"))

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        return f"PID {self.pid} on host {self.host}{job}"


def _read(path: Path) -> Optional[Holder]:
    try:
        data = json.loads(path.read_text())
        return Holder(**{k: data[k] for k in ("host", "pid", "started", "slurm_job", "slurm_restart", "token")},
                      slurm_cluster=data.get("slurm_cluster"))  # absent from the locks of earlier versions
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(holder: Optional[Holder], age_s: float, me: Holder) -> Optional[str]:
    """Why the lock of ``holder`` (last heartbeat ``age_s`` ago) may be taken over; None if not."""
    if holder is None:
        return "it was never written completely" if age_s > _UNWRITTEN_GRACE_S else None
    if holder.host == me.host and holder.pid == me.pid and holder.started == me.started:
        return OWN
    if holder.slurm_job and holder.slurm_job == me.slurm_job and holder.slurm_restart < me.slurm_restart:
        return f"it is from an earlier attempt of this Slurm job (restart {holder.slurm_restart})"
    if holder.host == me.host:
        return None if process_alive(holder.pid, holder.started) else "that process is gone"
    if age_s > STALE_AFTER_S:
        return f"no heartbeat for {age_s / 60:.0f} min"
    if holder.slurm_job and holder.slurm_cluster and holder.slurm_cluster == me.slurm_cluster \
            and slurm_job_ended(holder.slurm_job):
        return f"its Slurm job {holder.slurm_job} has ended"
    return None


class WriterLock:
    def __init__(self, directory: Path, log: Callable[[str], None] = print):
        self.path = Path(directory) / LOCK_FILE
        self.log = log
        self.me = Holder.this_process()
        self.unwritten = False
        self._stop = threading.Event()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = self._create()
        except OSError as e:
            raise CheckpointError(f"checkpoint.save: cannot create {self.path} ({e})") from None
        if created:
            return self._hold()
        holder, age = _read(self.path), self._age()
        reason = stale_reason(holder, age, self.me)
        if reason is None:
            who = holder.describe() if holder else "a run that is starting"
            raise CheckpointError(
                f"{self.path.parent} is in use by another run ({who}, heartbeat {age:.0f} s ago): two runs saving "
                f"into one directory replace each other's checkpoints. Stop that run or choose another "
                f"checkpoint.save; if it is dead on another host, delete {self.path}")
        own = reason == OWN
        if not own:
            self.log(f"taking over {self.path} of {holder.describe() if holder else 'an unknown run'}: {reason}")
        self.path.unlink(missing_ok=True)
        if not self._create() or not (own or self._still_mine_after_a_moment()):
            winner = _read(self.path)
            raise CheckpointError(f"{self.path}: another run ({winner.describe() if winner else 'unknown'}) took "
                                  f"this checkpoint directory at the same moment; run only one of them")
        self._hold()

    def release(self) -> None:
        self._stop.set()
        current = _read(self.path)
        if current.token == self.me.token if current else self.unwritten and _is_empty(self.path):
            self.path.unlink(missing_ok=True)

    def write_holder(self) -> None:
        """Write who holds the lock, if a full disk prevented it when it was taken (the lock file
        itself needs no data block, so a relaunch can hold it while it frees space)."""
        if not self.unwritten:
            return
        try:
            self.path.write_text(json.dumps(asdict(self.me)) + "\n")
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            raise CheckpointError(f"checkpoint.save {self.path.parent}: the disk is full (or the quota reached), with "
                                  f"no unfinished save of this run left to remove; free space and relaunch") from None
        self.unwritten = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(self.me)) + "\n")
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            self.unwritten = True
        return True

    def _still_mine_after_a_moment(self) -> bool:
        # Two runs that judged the same stale lock at once: the one that unlinked last wins;
        # the other sees it here (its unlink and re-create took far less than this pause).
        time.sleep(1.0)
        current = _read(self.path)
        return current.token == self.me.token if current else self.unwritten

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _hold(self) -> None:
        atexit.register(self.release)
        threading.Thread(target=self._heartbeat, name="checkpoint-lock-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or flaky file system must not stop training; a lost lock shows at the next launch


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return False


def lock_holder(directory: Path) -> Optional[str]:
    """Who holds the lock of ``directory`` now, for reports (preflight); None if nobody live does."""
    path = Path(directory) / LOCK_FILE
    if not path.exists():
        return None
    holder = _read(path)
    age = time.time() - path.stat().st_mtime
    if stale_reason(holder, age, Holder.this_process()) is not None:
        return None
    return f"{holder.describe() if holder else 'a starting run'} (heartbeat {age:.0f} s ago)"
