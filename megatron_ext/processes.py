"""Is the process that left a lock or a staging directory behind still running?

A PID alone is not enough: PIDs are reused (after a node reboot or a long uptime), so a
process counts as the same one only if its start time matches the recorded one.
"""

from __future__ import annotations

import socket
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
