"""Save-and-exit on SIGTERM / SIGUSR1, agreed on by every rank; ranks that die with their launcher.

Slurm sends SIGUSR1 ahead of the time limit (``--signal``) and SIGTERM on cancel or
preemption, often to every process of the job at once; it may reach the ranks at different
iterations, so before each iteration the ranks all-reduce (MAX) a flag and all stop together.

``watch()`` runs first thing in the entry point, before torch is imported (seconds), so a
signal that arrives while the run starts, loads a checkpoint or saves one is remembered rather
than fatal. A launcher that blocks the signals before starting the rank (megatron_ext.launch)
closes the last gap, the interpreter's own start: they stay pending until ``watch()``.
No torch import at module level, for the same reason.

srun drops a signal that reaches it before the job step's tasks exist, so slurm/train.sbatch
also writes the signal's name to a stop file (``MEGATRON_EXT_STOP_FILE``), read before every
iteration: a signal at the very start of a job stops the run rather than being lost.
"""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path
from typing import Optional

WATCHED = (signal.SIGTERM, signal.SIGUSR1)
# Set by megatron_ext.launch in each rank's environment: the launcher's PID.
LAUNCHER_PID = "MEGATRON_EXT_LAUNCHER_PID"
# Set by slurm/train.sbatch: the file its trap writes a stop signal's name to (USR1, TERM).
STOP_FILE = "MEGATRON_EXT_STOP_FILE"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_received: Optional[int] = None
_watching = False


def _record(signum, frame) -> None:
    global _received
    _received = _received or signum


def watch() -> None:
    """Remember the first SIGTERM / SIGUSR1 from now on (idempotent)."""
    global _watching
    if _watching:
        return
    for sig in WATCHED:
        signal.signal(sig, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
    _watching = True


def stop_watching() -> None:
    """Back to the default actions (checkpoint.exit_signal_handler=false, preflight): a signal
    that already arrived takes effect now, as it would have without watch()."""
    global _watching
    for sig in WATCHED:
        signal.signal(sig, signal.SIG_DFL)
    _watching = False
    if _received:
        signal.raise_signal(_received)


def _signal_in_stop_file() -> Optional[int]:
    if STOP_FILE not in os.environ:
        return None
    path = Path(os.environ[STOP_FILE])
    try:
        name = path.read_text(errors="replace").strip()
    except OSError:  # none yet (or unreadable for now: asked again before the next iteration)
        return None
    # Whatever else it holds (a file made by hand with `touch`): a stop, as by USR1. A run is
    # never failed by its stop request.
    named = signal.Signals.__members__.get("SIG" + name)
    return named if named in WATCHED else signal.SIGUSR1


def any_rank_signalled(device) -> Optional[str]:
    """Name of the signal if any rank got one or rank 0 found it in the stop file (collective:
    call on every rank)."""
    import torch
    import torch.distributed as dist

    global _received
    # Rank 0 alone reads the file (it runs on the batch script's node); the all-reduce tells the
    # rest, without every rank of a large job asking a shared file system each iteration.
    if not dist.is_initialized() or dist.get_rank() == 0:
        _received = _received or _signal_in_stop_file()
    flag = torch.tensor([_received or 0], dtype=torch.int32, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return signal.Signals(int(flag.item())).name if flag.item() else None


def die_with_launcher() -> None:
    """A rank started by a launcher process (megatron_ext.launch; torchrun, whose agent is the
    parent) is killed when that process dies: ranks left running after ``kill -9`` of the
    launcher would go on training and saving next to the relaunched run. Ranks started by srun
    or by hand are left alone (a ``nohup`` run must survive its shell)."""
    if LAUNCHER_PID in os.environ:
        launcher = int(os.environ[LAUNCHER_PID])
    elif "TORCHELASTIC_RUN_ID" in os.environ:
        launcher = os.getppid()
    else:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:  # it died before prctl took effect
        os._exit(128 + signal.SIGKILL)
