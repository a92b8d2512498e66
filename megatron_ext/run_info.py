"""Write what is needed to reproduce a run next to its logs, before it starts.

    python -m megatron_ext.run_info OUT_DIR [--world-size N] -- COMMAND [ARGS ...]

OUT_DIR gets:
  command.txt   the command, shell-quoted
  recipe.yaml   for ``-m megatron_ext.train RECIPE [key=value ...]`` commands: the fully
                resolved recipe (bases merged, overrides and ${oc.env:...} applied),
                validated for the world size; an invalid recipe exits 2 with the reason
  git.txt       commit, branch and changed files of this checkout; git.diff: its uncommitted changes
  env.txt       host, Python, package versions, nvidia-smi, the Slurm / NCCL / CUDA /
                Transformer Engine / launcher variables, and the values of the variables
                that the site env file of the slurm/ scripts sets

Cheap on purpose (no torch import): the Slurm scripts run it on every (re)start of a job.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["megatron-ext", "torch", "megatron-core", "transformer-engine", "transformer-engine-torch",
            "flash-attn", "numpy", "transformers", "omegaconf"]
ENV_PREFIXES = ("SLURM_", "NCCL_", "TORCH_NCCL_", "TORCH_SYMM_MEM_", "NVTE_", "UB_", "CUDA_", "MASTER_", "PYTHON",
                "OMP_", "LAUNCHER", "CONTAINER_", "VIRTUAL_ENV", "CONDA_PREFIX", "PROLONG_")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
SITE_ENV = "MEGATRON_EXT_SITE_ENV"  # the site env file's path, set by slurm/lib.sh
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)


def _run(cmd: List[str], cwd: Optional[Path] = None) -> Optional[str]:
    """Output of a command, or None if it is not installed or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def recipe_of(command: List[str]) -> Optional[tuple]:
    """(recipe, overrides) if ``command`` runs ``-m megatron_ext.train``, else None."""
    if "-m" not in command:
        return None
    i = command.index("-m")
    if command[i + 1:i + 2] != ["megatron_ext.train"] or len(command) < i + 3:
        return None
    return command[i + 2], command[i + 3:]


def write_recipe(out: Path, recipe: str, overrides: List[str], world_size: int) -> str:
    from megatron_ext.config import load_recipe, to_yaml

    r = load_recipe(recipe, overrides, world_size=world_size)
    (out / "recipe.yaml").write_text(to_yaml(r))
    p = r.parallel
    summary = (f"recipe {r.name}: {r.train.train_iters} iterations, world size {world_size} = TP "
               f"{p.tensor_model_parallel_size} x CP {p.context_parallel_size} x DP "
               f"{world_size // (p.tensor_model_parallel_size * p.context_parallel_size)}"
               + (", PREFLIGHT ONLY" if r.train.preflight else ""))
    if not r.checkpoint.save and not r.train.preflight:
        summary += "\nWARNING: checkpoint.save is not set: a stopped or requeued run cannot resume"
    return summary


def write_git(out: Path) -> str:
    commit = _run(["git", "rev-parse", "HEAD"], REPO)
    if commit is None:
        (out / "git.txt").write_text(f"{REPO}: not a git checkout, or git is not installed\n")
        return "git: unknown"
    branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], REPO) or "?\n"
    status = _run(["git", "status", "--porcelain"], REPO) or ""
    (out / "git.txt").write_text(f"repository {REPO}\ncommit {commit}branch {branch}changed files:\n"
                                 + (status or "  none\n"))
    diff = _run(["git", "diff", "HEAD"], REPO) or ""
    if diff:
        (out / "git.diff").write_text(diff)
    return f"git {commit.strip()[:12]}" + (f" + {len(status.splitlines())} changed files" if status else "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER variable and no passwd entry (containers)
        return f"uid {os.getuid()}"


def _public(name: str) -> bool:
    return not any(word in name for word in SECRET_WORDS)


def site_env_lines() -> List[str]:
    """The variables the site env file sets, with the values this job got."""
    path = os.environ.get(SITE_ENV)
    if not path:
        return []
    try:
        names = sorted(set(ASSIGNMENT.findall(Path(path).read_text())))
    except OSError as e:
        return ["", f"site env file {path}: unreadable ({e.strerror})"]
    return ["", f"site env file {path}:"] + [f"  {n}={os.environ.get(n, '(not set)')}" for n in names if _public(n)]


def write_env(out: Path) -> None:
    lines = [f"date {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
             f"host {socket.gethostname()}  user {_user()}  cwd {os.getcwd()}",
             f"python {platform.python_version()} ({sys.executable})  {platform.platform()}", "", "packages:"]
    lines += [f"  {p} {_version(p)}" for p in PACKAGES]
    smi = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"])
    lines += ["", "nvidia-smi:", *(f"  {line}" for line in (smi or "not available\n").splitlines())]
    lines += ["", "environment:"]
    lines += [f"  {k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES) and _public(k)]
    lines += site_env_lines()
    (out / "env.txt").write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_ext.run_info", description=__doc__.splitlines()[0],
                                     usage="%(prog)s OUT_DIR [--world-size N] -- COMMAND [ARGS ...]")
    parser.add_argument("out", type=Path, help="folder to write (created)")
    parser.add_argument("--world-size", type=int, default=1, help="ranks the command will run on (validates the recipe)")
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        parser.error("the run's command is missing (after --)")
    split = argv.index("--")
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]

    from megatron_ext.config import RecipeError

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "command.txt").write_text(shlex.join(command) + "\n")
    lines = []
    train = recipe_of(command)
    if train is not None:
        try:
            lines.append(write_recipe(args.out, *train, world_size=args.world_size))
        except RecipeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    lines.append(write_git(args.out))
    write_env(args.out)
    files = sorted(p.name for p in args.out.iterdir())
    print("\n".join([f"run info: {args.out} ({', '.join(files)})", *lines]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
