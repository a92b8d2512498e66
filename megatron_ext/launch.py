"""Train on the GPUs of one machine: ``python -m megatron_ext.launch --nproc-per-node N RECIPE.yaml [key=value ...]``.

Starts N ranks of ``python -m megatron_ext.train`` with torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and keeps the training's stop/resume contract:

- SIGTERM, SIGUSR1 and SIGINT sent to the launcher reach every rank (a stop signal: they save
  a checkpoint and exit 3); signals that arrive while the ranks start wait until they can be
  handled (blocked across the start, delivered once the rank watches for them);
- the exit code is the ranks': 0 finished, 3 stopped early after saving (launch again to
  continue), otherwise the first failing rank's code (128 + N if killed by signal N);
- a failing rank takes the others down (they would wait in a collective until its timeout);
- the ranks die with the launcher: after ``kill -9`` of the launcher none is left training.

Why not torchrun: its elastic agent reports a rank's exit 3 as a failure (exit 1), dies of
SIGUSR1 and leaves the ranks running, and kills them 30 s after passing on SIGTERM, which
can be mid-save. Several nodes: srun, one task per GPU (slurm/launch.sh).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from megatron_ext.net import free_port
from megatron_ext.train import EXIT_STOPPED_EARLY as STOPPED_EARLY
from megatron_ext.training.signals import LAUNCHER_PID

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# After a rank has finished normally, how long the others get to finish too.
FINISH_GRACE_S = 120


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def start_ranks(nproc: int, command: List[str], master_port: int) -> List[subprocess.Popen]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), LAUNCHER_PID: str(os.getpid())}
    return [subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
            for rank in range(nproc)]


def wait_for_ranks(ranks: List[subprocess.Popen]) -> int:
    """The job's exit code once every rank has ended; kills the rest after a failure."""
    first_failure: Optional[int] = None
    first_end: Optional[float] = None
    while any(p.poll() is None for p in ranks):
        for p in ranks:
            if p.returncode is not None and _exit_code(p.returncode) not in (0, STOPPED_EARLY):
                first_failure = first_failure or _exit_code(p.returncode)
            if p.returncode is not None and first_end is None:
                first_end = time.monotonic()
        if first_failure is not None or (first_end is not None and time.monotonic() - first_end > FINISH_GRACE_S):
            for p in ranks:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    codes = [_exit_code(p.returncode) for p in ranks]
    return first_failure or next((c for c in codes if c not in (0, STOPPED_EARLY)), max(codes))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_ext.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc-per-node", type=int, default=1, help="ranks to start (one per GPU)")
    parser.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free one)")
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny/prolong_stage1.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_intermixed_args(argv)
    if args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")

    # Blocked while the ranks start: they inherit the mask, so a signal sent to them before
    # they watch for it stays pending instead of killing them; one sent to the launcher is
    # forwarded once all ranks exist.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    command = [sys.executable, "-m", "megatron_ext.train", args.recipe, *args.overrides]
    ranks = start_ranks(args.nproc_per_node, command, args.master_port or free_port())

    def forward(signum, frame):
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    return wait_for_ranks(ranks)


if __name__ == "__main__":
    sys.exit(main())
