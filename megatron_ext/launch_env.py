"""Which rank this process is, from torchrun's or srun's variables, and the error for a
launch the user has to fix (no GPU visible, bad launcher variables).

Free of torch on purpose: the entry point validates the recipe against the world size
before it imports anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from megatron_ext.net import free_port


class LaunchError(RuntimeError):
    """The machine or the launcher cannot run this recipe; the message says what to change."""


def _int_env(name: str, default: str | None = None) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LaunchError(f"environment variable {name}={value!r} must be an integer "
                          f"(set by torchrun or srun)") from None


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun, else from srun's task variables."""
    if "RANK" in os.environ:
        return _int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK", "0")
    if "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        return _int_env("SLURM_PROCID"), _int_env("SLURM_NTASKS"), _int_env("SLURM_LOCALID")
    # A lone process: any free port, so that several single-GPU runs can share a node.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    return 0, 1, 0


def make_output_folders(folders: Dict[str, Optional[str]]) -> None:
    """Create each {recipe key: folder} now, so that an unusable path is one line naming its
    key before anything loads, not a traceback from deep in the first save."""
    problems = []
    for key, folder in folders.items():
        if folder is None:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problems.append(f"{key}: cannot create {folder}: {e.strerror or e}")
    if problems:
        raise LaunchError("; ".join(problems))
