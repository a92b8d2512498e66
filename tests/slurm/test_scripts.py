"""The slurm/ scripts without a Slurm: shellcheck; the launcher on a machine without Slurm
(tools/gpu/launch_without_slurm.sh, the GPU-box check) running the real training on the CPU and
passing a stop signal on; the container options of slurm/launch.sh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_runner import TINY_CPU, finish

from megatron_ext.training.cuda_env import ALLOC_CONF, GROWABLE_SEGMENTS, MAX_CONNECTIONS

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*(REPO / "slurm").rglob("*.sh"), *(REPO / "slurm").glob("*.sbatch"),
                  REPO / "tools" / "gpu" / "launch_without_slurm.sh"])


def test_shellcheck_is_clean(shellcheck):
    assert len(SCRIPTS) >= 12, SCRIPTS
    out = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_launch_without_slurm_passes_a_signal_on_and_writes_run_info(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 = this Python
    proc = subprocess.Popen([str(REPO / "tools" / "gpu" / "launch_without_slurm.sh"), str(tmp_path), *TINY_CPU,
                             "data.num_workers=2", "train.train_iters=1000", "checkpoint.save_interval=2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    log = tmp_path / "train.log"
    deadline = time.monotonic() + 300
    while not (log.exists() and "iter 3/1000" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the script only
    out = finish(proc, 300)
    assert proc.returncode == 3, out
    saved = int((tmp_path / "checkpoint" / "latest_checkpointed_iteration.txt").read_text())
    assert saved >= 3 and f"received SIGTERM: checkpoint saved at iteration {saved}" in log.read_text()
    info = tmp_path / "run_info"
    assert "train_iters: 1000" in (info / "recipe.yaml").read_text()
    environment = (info / "env.txt").read_text()
    assert "SLURM_PROCID=0" in environment and "LAUNCHER=local" in environment and "MASTER_PORT=" in environment
    assert "megatron_ext.train" in (info / "command.txt").read_text()


def test_launch_names_the_container_per_job_and_passes_our_variables_into_it(tmp_path):
    # No pyxis here: a stand-in srun prints the options it was given.
    (tmp_path / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "PYTHON_ENV": "container", "CONTAINER_IMAGE": "nvcr.io#nvidia/pytorch:25.04-py3", "SLURM_JOB_ID": "4242",
           "MASTER_ADDR": "node1", "NCCL_SOCKET_IFNAME": "ib0", MAX_CONNECTIONS: "8"}
    out = subprocess.run([str(REPO / "slurm" / "launch.sh"), "--", "python3", "-V"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    options = out.stdout.splitlines()
    assert "--container-name=megatron-ext-4242" in options and "--export=ALL" in options
    passed = next(o for o in options if o.startswith("--container-env=")).split("=", 1)[1].split(",")
    assert {"PYTHONPATH", "MASTER_ADDR", "MASTER_PORT", "NCCL_IB_TIMEOUT", "NCCL_SOCKET_IFNAME",
            ALLOC_CONF, MAX_CONNECTIONS} <= set(passed)   # ours and the user's win over the image's


def test_slurm_sets_nothing_the_entry_point_decides():
    """The CUDA settings that depend on the recipe come from the entry point for every kind of
    launch (megatron_ext/training/cuda_env.py); gpu_env.sh used to fix one hardware queue for
    every Slurm job (data-parallel ones too, which no benchmark measured so), and set the
    deprecated TORCH_NCCL_AVOID_RECORD_STREAMS. The allocator's is the same in both places."""
    keys = [ALLOC_CONF, MAX_CONNECTIONS, "TORCH_NCCL_AVOID_RECORD_STREAMS"]
    env = {k: v for k, v in os.environ.items() if k not in keys}
    out = subprocess.run(["bash", "-c", "source slurm/gpu_env.sh && env"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    exported = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert exported["NCCL_IB_TIMEOUT"] == "22" and exported[ALLOC_CONF] == GROWABLE_SEGMENTS
    assert [k for k in keys[1:] if k in exported] == []
