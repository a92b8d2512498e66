# shellcheck shell=bash
# Helpers shared by the slurm/ scripts (sourced, never run).

SLURM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO="$(dirname "$SLURM_DIR")"
STEPS=(data import_hf train export_hf eval)

log() { printf '[megatron-ext %s] %s\n' "$(date '+%F %T')" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }
# The comment block at the top of a script, as its help text.
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$1"; }

# Site settings (account, partition, paths, Python environment) come from one file:
# $SITE_ENV, default slurm/site.env. It is read at submission; a job, requeued runs included,
# keeps the values it was submitted with. Where the submission's environment does not reach
# the job (SBATCH_EXPORT=NONE, --export=NONE), the job reads the same file again when it starts.
load_site_env() {
    # Site files use $USER in paths; containers and --export=NONE jobs may not set it.
    export USER=${USER:-$(id -un)}
    if [[ -z ${MEGATRON_EXT_SITE_LOADED:-} ]]; then
        local file=${MEGATRON_EXT_SITE_ENV:-${SITE_ENV:-$SLURM_DIR/site.env}}
        [[ -f $file ]] || die "site env file not found: $file (copy slurm/site.env.example to slurm/site.env and edit it, or set SITE_ENV=PATH)"
        set -a
        # shellcheck source=site.env.example
        source "$file"
        set +a
        export MEGATRON_EXT_SITE_ENV=$file MEGATRON_EXT_SITE_LOADED=1
    fi
    export GPUS_PER_NODE=${GPUS_PER_NODE:-8}
    export TASKS_PER_NODE=${TASKS_PER_NODE:-$(( GPUS_PER_NODE > 0 ? GPUS_PER_NODE : 1 ))}
    export MAX_REQUEUES=${MAX_REQUEUES:-10}
    export TRAIN_EXCLUSIVE=${TRAIN_EXCLUSIVE:-1}
}

# job_field JOB_ID FIELD: one field of `scontrol show job` (e.g. Command, StdOut); for an
# array's id, that of its first task.
job_field() { scontrol show job "$1" | sed -n "0,/^ *$2=/s/^ *$2=//p"; }

# wait_for PID: the exit code of a background child once it has ended (a trapped signal cuts
# `wait` short while the child still runs).
wait_for() {
    local rc
    while :; do
        rc=0
        wait "$1" || rc=$?
        kill -0 "$1" 2>/dev/null || return "$rc"
    done
}

# --- inside a job -----------------------------------------------------------------------

# This job for scontrol: an array task is ARRAYID_TASKID (one task's plain id is the array's,
# which names every task: `scontrol requeue` on it would requeue them all).
this_job() {
    if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
        echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
        echo "${SLURM_JOB_ID:?not in a Slurm job}"
    fi
}

# The run's info folder, next to the job's log: LOG.info/runN (N = requeues so far).
run_info_dir() {
    local out
    out=$(job_field "$(this_job)" StdOut)
    printf '%s.info/run%s\n' "${out%.out}" "${SLURM_RESTART_COUNT:-0}"
}

# write_run_info DIR WORLD_SIZE COMMAND...: the command, its resolved recipe (training:
# validated for WORLD_SIZE; exit 2 if invalid), git commit and environment, in the job's Python.
write_run_info() {
    "$SLURM_DIR/launch.sh" --nodes 1 --tasks-per-node 1 -- \
        python3 -m megatron_ext.run_info "$1" --world-size "$2" -- "${@:3}"
}

# run_step COMMAND...: a one-task step (data, conversion, evaluation) with its run info.
run_step() {
    log "job $SLURM_JOB_ID ($SLURM_JOB_NAME) on $SLURM_JOB_NODELIST: $*"
    # A log file is no terminal: no progress bars (tqdm, Hugging Face downloads).
    export TQDM_DISABLE=${TQDM_DISABLE:-1} HF_HUB_DISABLE_PROGRESS_BARS=${HF_HUB_DISABLE_PROGRESS_BARS:-1}
    write_run_info "$(run_info_dir)" 1 "$@"
    local rc=0
    "$SLURM_DIR/launch.sh" --nodes 1 --tasks-per-node 1 -- "$@" || rc=$?
    log "$SLURM_JOB_NAME finished with exit code $rc"
    return "$rc"
}

# --- submission -------------------------------------------------------------------------

# submit_step STEP [SBATCH_OPTION ...] -- ARGS...: sbatch the step's script with the site's
# resources (options given here come last and win). Sets JOB_ID.
submit_step() {
    local step=$1 script opts=()
    shift
    case $step in
        train)
            opts=(--ntasks-per-node="$TASKS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE")
            # train.sbatch asks for whole nodes; TRAIN_EXCLUSIVE=0 lets small runs share one.
            [[ $TRAIN_EXCLUSIVE == 1 ]] || opts+=(--oversubscribe) ;;
        eval) opts=(--gpus-per-node=$(( GPUS_PER_NODE > 0 ? 1 : 0 ))) ;;
        data | import_hf | export_hf) opts=(${CPU_PARTITION:+--partition="$CPU_PARTITION"}) ;;
        *) die "unknown step '$step' (steps: ${STEPS[*]})" ;;
    esac
    script=$SLURM_DIR/$step.sbatch
    local log_dir=${LOG_DIR:-${PROLONG_CKPT:+$PROLONG_CKPT/logs}}
    [[ -n $log_dir ]] || die "LOG_DIR is not set: where the job logs go (site env file; default \$PROLONG_CKPT/logs)"
    opts+=(${CPUS_PER_TASK:+--cpus-per-task="$CPUS_PER_TASK"} --output="$log_dir/%x-%j.out" --kill-on-invalid-dep=yes)
    # Without the submission's environment (SBATCH_EXPORT=NONE ...) the job reads the site file again.
    [[ ${SBATCH_EXPORT:-ALL} == ALL* ]] || opts+=(--export="$SBATCH_EXPORT,MEGATRON_EXT_SITE_ENV=$MEGATRON_EXT_SITE_ENV")
    local array=
    while [[ $# -gt 0 && $1 != -- ]]; do
        case $1 in
            --array=*) array=1; opts+=("$1") ;;
            --export=ALL*) opts+=("$1") ;;
            --export=*) opts+=("$1,MEGATRON_EXT_SITE_ENV=$MEGATRON_EXT_SITE_ENV") ;;
            *) opts+=("$1") ;;
        esac
        shift
    done
    [[ ${1:-} == -- ]] && shift
    check_step_args "$step" "$@"
    [[ -z $array || $step != train ]] || check_array_args "${@:2}"
    mkdir -p "$log_dir"
    JOB_ID=$(sbatch --parsable "${opts[@]}" "$script" "$@") || die "sbatch refused the $step job (options: ${opts[*]})"
    JOB_ID=${JOB_ID%%;*}  # "id;cluster" on multi-cluster sites
}

# Refuse at submission what would only fail once the job starts.
check_step_args() {
    local step=$1
    shift
    case $step in
        train)
            (( $# >= 1 )) || die "train: usage: train RECIPE.yaml [key=value ...]"
            [[ -f $1 ]] || die "train: recipe not found: $1"
            local override
            for override in "${@:2}"; do
                [[ $override == ?*=* ]] || die "train: '$override' is not a key=value override"
            done ;;
        data)
            (( $# >= 1 )) || die "data: usage: data PLAN.sh [ARGS ...]"
            [[ -f $1 ]] || die "data: plan not found: $1" ;;
        import_hf) (( $# >= 2 )) || die "import_hf: usage: import_hf HF_DIR OUT_DIR [options]" ;;
        export_hf) (( $# >= 2 )) || die "export_hf: usage: export_hf CHECKPOINT OUT_DIR --tokenizer HF_DIR [options]" ;;
        eval) (( $# >= 1 )) || die "eval: usage: eval HF_DIR --out DIR [options]" ;;
    esac
}

# check_array_args OVERRIDE...: in a job array every task needs its own checkpoint directory
# (train.sbatch replaces %a with the task id and %A with the array's id), or they would resume
# from each other's checkpoints.
check_array_args() {
    local override
    for override in "$@"; do
        [[ $override == checkpoint.save=*%a* ]] && return 0
    done
    die "job array: give every task its own checkpoint directory, e.g. checkpoint.save=/path/sweep/task%a (%a = the task id)"
}
