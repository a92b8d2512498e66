"""The slurm/ scripts without a Slurm: shellcheck, and the launcher on a machine without Slurm
(tools/gpu/launch_without_slurm.sh, the GPU-box check) running the real training on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*(REPO / "slurm").rglob("*.sh"), *(REPO / "slurm").glob("*.sbatch"),
                  REPO / "tools" / "gpu" / "launch_without_slurm.sh"])


def test_shellcheck_is_clean(shellcheck):
    assert len(SCRIPTS) >= 12, SCRIPTS
    out = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_launch_without_slurm_trains_and_writes_run_info(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 = this Python
    out = subprocess.run([str(REPO / "tools" / "gpu" / "launch_without_slurm.sh"), str(tmp_path),
                          "recipes/tiny/prolong_stage1.yaml", "train.device=cpu", "precision.bf16=false",
                          "train.seq_length=256", "train.global_batch_size=4", "model.vocab_size=512",
                          "data.synthetic.vocab_size=null", "data.num_workers=0", "logging.progress_bar=false",
                          "train.train_iters=2"], cwd=REPO, env=env, capture_output=True, text=True)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "iter 2/2" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "checkpoint" / "iter_0000002" / "metadata.json").exists()
    info = tmp_path / "run_info"
    assert "train_iters: 2" in (info / "recipe.yaml").read_text()
    environment = (info / "env.txt").read_text()
    assert "SLURM_PROCID=0" in environment and "LAUNCHER=local" in environment and "MASTER_PORT=" in environment
    assert "megatron_ext.train" in (info / "command.txt").read_text()
