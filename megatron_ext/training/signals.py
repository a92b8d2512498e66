"""Save-and-exit on SIGTERM / SIGUSR1, agreed on by every rank.

Slurm sends SIGUSR1 ahead of the time limit (``--signal``) and SIGTERM on cancel or
preemption; it may reach the ranks at different iterations, so each iteration the ranks
all-reduce (MAX) a flag and all stop after the same one.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

WATCHED = (signal.SIGTERM, signal.SIGUSR1)


class ExitSignalWatcher:
    """Installed before the process group and checkpoint load, so a signal that arrives while
    a large checkpoint loads is not lost: the run then saves after its first iteration."""

    def __init__(self, enabled: bool = True):
        self.received: Optional[int] = None
        if enabled:
            for sig in WATCHED:
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def any_rank_signalled(self, device: torch.device) -> Optional[str]:
        """Name of the signal if any rank got one (collective: call on every rank)."""
        flag = torch.tensor([self.received or 0], dtype=torch.int32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return signal.Signals(int(flag.item())).name if flag.item() else None
