"""A checkpoint directory's layout and which checkpoint in it to use, from the file system alone.

    <dir>/iter_0000250/                    one checkpoint (Megatron's metadata.json = complete)
    <dir>/latest_checkpointed_iteration.txt  the iteration to resume from
    <dir>/.incomplete_iter_0000300/        a save in progress, or the remains of one that died

No torch import: the conversion tools answer and refuse bad input before loading torch.
Every refusal is one line that names the file and says what to do.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

TRACKER = "latest_checkpointed_iteration.txt"
INCOMPLETE_PREFIX = ".incomplete_"
# The errors of a full disk or a reached quota: named as such, never a traceback.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_ITERATION_DIR = re.compile(r"iter_(\d+)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (or written) as asked; the one-line message says why."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files are missing, truncated or changed: another checkpoint may still be good."""


def iteration_dir(root: Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def is_complete(path: Path) -> bool:
    """Megatron writes metadata.json last; ours are renamed into place only after that."""
    return (Path(path) / "metadata.json").is_file()


def iteration_dirs(root: Path) -> Dict[int, Path]:
    """Every ``iter_*`` directory of ``root`` by iteration, complete or not, oldest first."""
    found = {}
    for path in Path(root).glob("iter_*"):
        match = _ITERATION_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def complete_checkpoints(root: Path) -> Dict[int, Path]:
    return {it: path for it, path in iteration_dirs(root).items() if is_complete(path)}


# How to use another checkpoint than the one refused, in the caller's terms (a recipe key, a
# command-line argument): (iteration, directory) -> "set checkpoint.ckpt_step=35".
Remedy = Callable[[int, Path], str]


def use_path(iteration: int, path: Path) -> str:
    return f"pass {path} to use it"


def newest_other(root: Path, remedy: Remedy, besides: Optional[Path] = None) -> str:
    """'the newest complete checkpoint there is iter_0000035: <remedy>', for refusals."""
    others = [(it, p) for it, p in complete_checkpoints(root).items() if besides is None or p != Path(besides)]
    other = " other" if besides is not None else ""
    if not others:
        return f"{root} holds no{other} complete checkpoint"
    it, path = others[-1]
    return f"the newest{other} complete checkpoint there is {path.name}: {remedy(it, path)}"


def refuse_damaged(message: str, checkpoint: Path, remedy: Remedy) -> DamagedCheckpointError:
    """The refusal of a damaged checkpoint; in a save directory it names the newest other one."""
    checkpoint = Path(checkpoint)
    if _ITERATION_DIR.fullmatch(checkpoint.name):
        message += f"; {newest_other(checkpoint.parent, remedy, besides=checkpoint)}"
    return DamagedCheckpointError(message)


def find_checkpoint(path: str | os.PathLike, step: Optional[int] = None, remedy: Remedy = use_path,
                    step_key: str = "ckpt_step") -> Optional[Path]:
    """The checkpoint to use at ``path``: ``path`` itself if it is one; else iteration ``step``
    of it; else the one its tracker names. None if ``path`` holds no checkpoint at all.

    Never guesses: a broken or missing tracker next to existing checkpoints, or a tracker
    naming an incomplete one, is refused (a run that started fresh there would overwrite them).
    """
    path = Path(path)
    if is_complete(path):
        if step is not None:
            raise CheckpointError(f"{step_key}={step}: {path} is one checkpoint, not a save directory of several")
        return path
    if step is not None:
        chosen = iteration_dir(path, step)
        if not is_complete(chosen):
            have = ", ".join(str(it) for it in complete_checkpoints(path)) or "none"
            raise CheckpointError(f"{step_key}={step}: {chosen} is not a complete checkpoint "
                                  f"(complete iterations in {path}: {have})")
        return chosen
    tracker = path / TRACKER
    if not tracker.is_file():
        if iteration_dirs(path):
            raise CheckpointError(f"{path} holds checkpoints but no {TRACKER}, so which one to resume is unknown "
                                  f"(nothing was loaded or deleted); {newest_other(path, remedy)}")
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text[:40]!r}; "
                              f"{newest_other(path, remedy)}")
    found = iteration_dir(path, int(text))
    if not is_complete(found):
        raise refuse_damaged(f"{tracker} names iteration {text}, but {found} is not a complete checkpoint", found,
                             remedy)
    return found


def remove_incomplete_saves(root: Path) -> List[str]:
    """Delete what saves that died left behind (call only while holding the writer lock: then no
    save is in progress). Returns the names removed."""
    removed = []
    for leftover in sorted(Path(root).glob(f"{INCOMPLETE_PREFIX}*")):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover.name)
    return removed
