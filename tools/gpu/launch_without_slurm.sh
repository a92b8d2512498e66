#!/usr/bin/env bash
# One training stage through slurm/launch.sh, the launcher of the sbatch scripts, on a machine
# without Slurm (a lone GPU box): sets what sbatch and srun would set for one node and one
# task, writes the run info as the sbatch scripts do, then trains.
#
#   tools/gpu/launch_without_slurm.sh OUT_DIR [RECIPE.yaml [key=value ...]]
#
# Default recipe: recipes/tiny/prolong_stage1.yaml for 30 iterations. Writes OUT_DIR/run_info/
# (command, resolved recipe, git commit, environment with nvidia-smi), OUT_DIR/checkpoint/ and
# OUT_DIR/train.log. Python: PYTHON_ENV=none (python3 as found, PYTHONPATH as set) unless set.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if (( $# < 1 )); then
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
if (( $# == 0 )); then
    set -- "$repo/recipes/tiny/prolong_stage1.yaml" train.train_iters=30
fi

# What sbatch (the job) and srun (task 0 of 1) would set.
node=$(hostname -s)
getent hosts "$node" >/dev/null || node=localhost  # launch.sh uses the node name as MASTER_ADDR
export SLURM_JOB_ID=${SLURM_JOB_ID:-$$} SLURM_JOB_NAME=launch-without-slurm SLURM_RESTART_COUNT=0
export SLURM_NNODES=1 SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=$node SLURM_NODELIST=$node SLURM_NODEID=0
export SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 SLURM_PROCID=0 SLURM_LOCALID=0
export SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-$(nproc)}
export LAUNCHER=local PYTHON_ENV=${PYTHON_ENV:-none}

train=(python3 -m megatron_ext.train "$@" checkpoint.save="$out/checkpoint")
"$repo/slurm/launch.sh" -- python3 -m megatron_ext.run_info "$out/run_info" -- "${train[@]}"
"$repo/slurm/launch.sh" -- "${train[@]}" 2>&1 | tee "$out/train.log"
