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
# SIGTERM / SIGUSR1 to this script reach the training (it saves and exits 3); the exit code is
# the training's.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR/../../slurm source=lib.sh
source "$repo/slurm/lib.sh"
if (( $# < 1 )); then
    usage "$0" >&2
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
# In the background, so that a signal to this script can be passed on (bash would otherwise
# wait for the pipeline before running a trap, or die of the signal and leave it running).
"$repo/slurm/launch.sh" -- "${train[@]}" > >(tee "$out/train.log") 2>&1 &
child=$!
trap 'kill -s TERM "$child"' TERM
trap 'kill -s USR1 "$child"' USR1
rc=0
wait_for "$child" || rc=$?
exit "$rc"
