"""Is the process that left a lock or a staging directory behind still running?

A PID alone is not enough: PIDs are reused (after a node reboot or a long uptime), so a
process counts as the same one only if its start time matches the recorded one. A process on
another host cannot be seen from here, but its Slurm job can be asked about.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Optional

import psutil


def this_host() -> str:
    return socket.gethostname()


def start_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: Optional[float] = None) -> bool:
    """Whether ``pid`` runs on this host (and, if ``started`` is given, is the process that
    started then). Zombies count as gone."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.Error:
        return False


# Job states whose processes have all ended (PENDING: not started, or requeued and not yet
# restarted). Anything else, or no clear answer, counts as possibly running.
SLURM_ENDED_STATES = {"PENDING", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}


def slurm_job_ended(job_id: str, timeout_s: float = 10.0) -> bool:
    """Whether Slurm (this host's cluster) says that job ``job_id`` runs no process any more:
    finished, not started, or no longer known (Slurm forgets finished jobs after MinJobAge).
    False when it cannot tell: no squeue, controller unreachable, a state that may still run."""
    try:
        out = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format", "%T"],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return False
    if out.returncode != 0:
        return "invalid job id" in out.stderr.lower()
    states = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    return states <= SLURM_ENDED_STATES
