#!/usr/bin/env bash
# Start a command inside an allocation, the same way for every step:
#   slurm/launch.sh [--nodes N] [--tasks-per-node N] -- COMMAND [ARGS ...]
# 1. the Python environment: PYTHON_ENV=venv (VENV_DIR) | conda (CONDA_ENV) | container
#    (CONTAINER_IMAGE, CONTAINER_MOUNTS; pyxis/enroot) | none (python3 as found, e.g. PYTHONPATH set);
# 2. NCCL settings: slurm/gpu_env.sh (CUDA's depend on the recipe: the entry point sets them);
# 3. the rendezvous: MASTER_ADDR = first node of the allocation, MASTER_PORT from the job id;
# 4. LAUNCHER=srun (default): N tasks per node (default: the job's --ntasks-per-node), each
#    reading its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID;
#    LAUNCHER=local: no Slurm; COMMAND runs here as the only task
#    (tools/gpu/launch_without_slurm.sh sets what Slurm would).
# Used by every slurm/*.sbatch; reads the variables of the site env file from the environment.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: slurm/launch.sh [--nodes N] [--tasks-per-node N] -- COMMAND [ARGS ...]"
nodes=${SLURM_JOB_NUM_NODES:-1}
tasks_per_node=${SLURM_NTASKS_PER_NODE:-1}
while [[ $# -gt 0 ]]; do
    case $1 in
        --nodes) nodes=$2; shift 2 ;;
        --tasks-per-node) tasks_per_node=$2; shift 2 ;;
        --) shift; break ;;
        *) die "launch.sh: unknown option '$1'; $usage" ;;
    esac
done
(( $# > 0 )) || die "launch.sh: no command; $usage"
launcher=${LAUNCHER:-srun}
[[ $launcher == srun || $launcher == local ]] || die "LAUNCHER='$launcher': expected srun or local"

container=()
case ${PYTHON_ENV:-} in
    venv)
        [[ -f ${VENV_DIR:-}/bin/activate ]] || die "PYTHON_ENV=venv: VENV_DIR='${VENV_DIR:-}' has no bin/activate"
        # shellcheck source=/dev/null
        source "$VENV_DIR/bin/activate" ;;
    conda)
        conda=${CONDA_EXE:-$(command -v conda || true)}
        [[ -x $conda ]] || die "PYTHON_ENV=conda: conda not found (put it on PATH or set CONDA_EXE)"
        [[ -n ${CONDA_ENV:-} ]] || die "PYTHON_ENV=conda: set CONDA_ENV (an environment name or path)"
        set +u  # conda's activation scripts read unset variables
        eval "$("$conda" shell.bash hook)"
        conda activate "$CONDA_ENV"
        set -u ;;
    container)
        [[ -n ${CONTAINER_IMAGE:-} ]] || die "PYTHON_ENV=container: set CONTAINER_IMAGE (e.g. nvcr.io#nvidia/pytorch:25.04-py3 or a .sqsh file)"
        [[ $launcher == srun ]] || die "PYTHON_ENV=container needs LAUNCHER=srun (pyxis is an srun plugin)"
        # The checkout and the working directory are mounted where they are outside.
        mounts=$REPO
        [[ $PWD == "$REPO" ]] || mounts+=",$PWD"
        # Named per job: the steps and requeued runs of a job reuse it, while another job (another
        # image, perhaps) never finds a container of the same name and silently runs in it.
        container=(--container-image="$CONTAINER_IMAGE" --container-mounts="$mounts${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
                   --container-workdir="$PWD" --container-name="megatron-ext-${SLURM_JOB_ID:?launch.sh: SLURM_JOB_ID is not set}") ;;
    none) ;;
    *) die "PYTHON_ENV='${PYTHON_ENV:-}': expected venv, conda, container or none (set it in the site env file)" ;;
esac

# shellcheck source=gpu_env.sh
source "$SLURM_DIR/gpu_env.sh"

if [[ -z ${MASTER_ADDR:-} ]]; then
    nodelist=${SLURM_JOB_NODELIST:?launch.sh: SLURM_JOB_NODELIST is not set (not in a Slurm allocation?)}
    if [[ $launcher == srun ]]; then
        hosts=$(scontrol show hostnames "$nodelist") || die "launch.sh: scontrol cannot expand '$nodelist'"
        MASTER_ADDR=${hosts%%$'\n'*}
    else
        [[ $nodelist != *[[,]* ]] || die "LAUNCHER=local: SLURM_JOB_NODELIST='$nodelist' must be one host name"
        MASTER_ADDR=$nodelist
    fi
fi
# Derived from the job id: two jobs sharing a node do not collide, and a requeued run reuses it.
MASTER_PORT=${MASTER_PORT:-$(( 20000 + ${SLURM_JOB_ID:?launch.sh: SLURM_JOB_ID is not set} % 20000 ))}
cpus=${SLURM_CPUS_PER_TASK:-1}
export MASTER_ADDR MASTER_PORT
export MEGATRON_EXT_REPO=$REPO
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cpus}

ntasks=$(( nodes * tasks_per_node ))
if [[ $launcher == local ]]; then
    (( ntasks == 1 )) || die "LAUNCHER=local runs one task; asked for $nodes node(s) x $tasks_per_node"
    exec "$@"
fi
label=()
(( ntasks == 1 )) || label=(--label)
if (( ${#container[@]} )); then
    # The image's own values of these (PYTHONPATH, NCCL_*, ...) would win over ours inside the
    # container unless named here.
    mapfile -t names < <(sed -n 's/^export \([A-Z_0-9]*\)=.*/\1/p' "$SLURM_DIR/gpu_env.sh"
                         compgen -e | grep -E '^(NCCL|TORCH_NCCL|NVTE)_')
    set_names=()
    for name in MASTER_ADDR MASTER_PORT MEGATRON_EXT_REPO PYTHONPATH PYTHONUNBUFFERED OMP_NUM_THREADS \
                TQDM_DISABLE HF_HUB_DISABLE_PROGRESS_BARS CUDA_DEVICE_MAX_CONNECTIONS \
                "${names[@]}"; do
        [[ -z ${!name+set} ]] || set_names+=("$name")
    done
    container+=(--container-env="$(IFS=,; echo "${set_names[*]}")")
fi
# --cpus-per-task: srun does not inherit it from sbatch (Slurm >= 22.05). --export=ALL: the
# tasks get this environment even in a job submitted with --export=NONE (srun would pass on
# NONE). --wait: once a task has ended, the others get 120 s (a crashed rank must not leave the
# rest hanging in a collective).
exec srun --nodes="$nodes" --ntasks-per-node="$tasks_per_node" --ntasks="$ntasks" --cpus-per-task="$cpus" \
    --export=ALL --wait=120 "${label[@]}" "${container[@]}" "$@"
