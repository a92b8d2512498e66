"""Run ``python -m megatron_ext.train`` (or torchrun) as a subprocess and read its metrics."""

import json
import os
import signal
import subprocess
from pathlib import Path

from megatron_ext.net import free_port

REPO = Path(__file__).resolve().parents[1]


def read_metrics(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(metrics: list) -> list:
    return [(m["iteration"], m["loss"]) for m in metrics]


def start_train(args: list, metrics: Path, env: dict, nproc: int = 1) -> subprocess.Popen:
    args = [*args, f"logging.metrics_jsonl={metrics}"]
    if nproc == 1:
        cmd = ["python", "-m", "megatron_ext.train", *args]
    else:
        cmd = ["torchrun", f"--nproc-per-node={nproc}", f"--master-port={free_port()}", "-m", "megatron_ext.train", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for the run; on timeout kill its whole process group (never leave ranks behind)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def train(args: list, metrics: Path, env: dict, nproc: int = 1, timeout: float = 900):
    """(return code, output, metrics) of a complete run."""
    proc = start_train(args, metrics, env, nproc)
    out = finish(proc, timeout)
    return proc.returncode, out, read_metrics(metrics)
