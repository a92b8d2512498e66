"""Helpers of the conversion tests: reading HF weights and running the Megatron worker."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from megatron_ext.net import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("megatron_worker.py")


def hf_state(directory: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: Dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def python_command(nproc: int) -> List[str]:
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def run_worker(job: dict, job_file: Path, env: dict, nproc: int = 1, timeout: int = 600) -> None:
    """Run megatron_worker.py on ``job``; fail with its output if it fails."""
    job_file.write_text(json.dumps(job))
    # A fixed default port would collide with concurrent single-process runs on the machine.
    env = {**env, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*python_command(nproc), str(WORKER), str(job_file)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]


def worker_case(checkpoint: Path, model: dict, tokens: Path, logits: Path, save: Optional[Path] = None) -> dict:
    return {"checkpoint": str(checkpoint), "model": model, "tokens": str(tokens), "logits": str(logits),
            "save": str(save) if save else None}
