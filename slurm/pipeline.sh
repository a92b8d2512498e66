#!/usr/bin/env bash
# Submit the whole ProLong pipeline, one job per step, chained with afterok dependencies:
#
#   data ──────┐
#              ├─> stage1 ─> stage2 ─> sft ─> export_hf ─> eval
#   import_hf ─┘   (64K)     (512K, with stage 1's optimizer state)
#
#   slurm/pipeline.sh [--preflight] [--from STEP] [SBATCH_OPTION=VALUE ...]
#
# --preflight   the training stages run train.preflight=true: every step up to the first GPU
#               operation, then a report ("PREFLIGHT ONLY"); nothing is trained, so export_hf
#               and eval are not submitted, and stage 2 and SFT report that their input, which
#               the previous stage would write, is not there yet. data and import_hf run for real.
# --from STEP   start at STEP; the outputs of the steps before it must exist.
# SBATCH_OPTIONs (--qos=..., --reservation=...) go to every job.
#
# A failed step cancels everything that depends on it (--kill-on-invalid-dep). Settings, from
# the site env file (slurm/site.env.example lists them) or the environment:
#   HF_MODEL (required)   the Hugging Face model to start from (Llama-3-8B-Instruct); also the
#                         tokenizer of the export
#   RUN_DIR               outputs: base/ stage1/ stage2/ sft/ (checkpoints) hf/ eval/ logs/ jobs.txt
#                         (default $PROLONG_CKPT/prolong); jobs.txt: "STEP JOB_ID", plus
#                         " cancelled" for jobs cancelled because a later submission failed
#   DATA_PLAN             the data step's script (default slurm/data/prolong_raw.sh)
#   STAGE1_RECIPE STAGE2_RECIPE SFT_RECIPE   (default recipes/prolong/*.yaml)
#   STAGE1_NODES STAGE2_NODES SFT_NODES      nodes per training stage (default 1)
#   TRAIN_OVERRIDES       key=value ... for every training stage; STAGE1_OVERRIDES,
#                         STAGE2_OVERRIDES, SFT_OVERRIDES for one
#   EVAL_ARGS             tools/eval.py options (default --lengths 8K,16K,32K,64K)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

order=(data import_hf stage1 stage2 sft export_hf eval)
preflight=0
from=data
options=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) usage "$0"; exit 0 ;;
        --preflight) preflight=1; shift ;;
        --from) [[ $# -ge 2 ]] || die "--from needs a step (${order[*]})"; from=$2; shift 2 ;;
        --from=*) from=${1#--from=}; shift ;;
        --*=*) options+=("$1"); shift ;;
        *) die "unknown argument '$1'; see slurm/pipeline.sh --help" ;;
    esac
done
[[ " ${order[*]} " == *" $from "* ]] || die "--from: unknown step '$from' (steps: ${order[*]})"
load_site_env
[[ -n ${HF_MODEL:-} ]] || die "HF_MODEL is not set: the Hugging Face model to start from (site env file)"
run_dir=${RUN_DIR:-${PROLONG_CKPT:+$PROLONG_CKPT/prolong}}
[[ -n $run_dir ]] || die "RUN_DIR is not set, nor PROLONG_CKPT: where the pipeline's checkpoints and logs go (site env file)"
[[ $run_dir == /* ]] || run_dir=$PWD/$run_dir
name=$(basename "$run_dir")
export LOG_DIR=$run_dir/logs
mkdir -p "$LOG_DIR"
read -ra common <<< "${TRAIN_OVERRIDES:-}"
mode=
if (( preflight )); then
    common+=(train.preflight=true)
    mode=" (PREFLIGHT ONLY: the training stages train nothing)"
fi

declare -A output=([import_hf]=$run_dir/base [stage1]=$run_dir/stage1 [stage2]=$run_dir/stage2
                   [sft]=$run_dir/sft [export_hf]=$run_dir/hf [eval]=$run_dir/eval)
declare -A job=()
submitted=()
started=0

# Half a pipeline is worse than none: if a submission fails, cancel what was submitted.
cancel_partial() {
    if [[ $? -ne 0 && ${#submitted[@]} -gt 0 ]]; then
        scancel "${submitted[@]}" || true
        sed -i 's/$/ cancelled/' "$run_dir/jobs.txt"
        echo "cancelled the jobs already submitted: ${submitted[*]}" >&2
    fi
}
trap cancel_partial EXIT

# Whether STEP is submitted: it is --from's step or comes after it.
submitting() {
    [[ $1 == "$from" ]] && started=1
    (( started ))
}

# step NAME SBATCH_STEP "AFTER ..." [SBATCH_OPTION ...] -- ARGS ...
step() {
    local step=$1 script=$2 after=() deps=() dep
    read -ra after <<< "$3"
    shift 3
    submitting "$step" || return 0
    for dep in "${after[@]}"; do
        if [[ -n ${job[$dep]:-} ]]; then
            deps+=("${job[$dep]}")
        elif [[ -n ${output[$dep]:-} && ! -e ${output[$dep]} ]]; then
            die "$step needs the output of $dep, which is not submitted (--from $from) and not there: ${output[$dep]}"
        fi
    done
    local dependency=() job_name=$name-$step
    (( ${#deps[@]} == 0 )) || dependency=(--dependency="afterok$(printf ':%s' "${deps[@]}")")
    [[ $script == train ]] && (( preflight )) && job_name+=-preflight
    submit_step "$script" --job-name="$job_name" "${dependency[@]}" "${options[@]}" "$@"
    job[$step]=$JOB_ID
    submitted+=("$JOB_ID")
    printf '  %-10s job %-8s %-22s log %s\n' "$step" "$JOB_ID" "${deps[*]:+after ${deps[*]}}" \
        "$(job_field "$JOB_ID" StdOut)"
    printf '%s %s\n' "$step" "$JOB_ID" >> "$run_dir/jobs.txt"
}

# train_step NAME RECIPE NODES INPUT STAGE_OVERRIDES AFTER
train_step() {
    submitting "$1" || return 0
    local extra=()
    read -ra extra <<< "$5"
    step "$1" train "$6" --nodes="$3" -- "$2" checkpoint.pretrained_checkpoint="$4" \
        checkpoint.save="${output[$1]}" "${common[@]}" "${extra[@]}"
}

echo "pipeline $name$mode: $run_dir"
: > "$run_dir/jobs.txt"
step data data "" -- "${DATA_PLAN:-$SLURM_DIR/data/prolong_raw.sh}"
step import_hf import_hf "" -- "$HF_MODEL" "${output[import_hf]}"
train_step stage1 "${STAGE1_RECIPE:-$REPO/recipes/prolong/stage1_64k.yaml}" "${STAGE1_NODES:-1}" \
    "${output[import_hf]}" "${STAGE1_OVERRIDES:-}" "data import_hf"
train_step stage2 "${STAGE2_RECIPE:-$REPO/recipes/prolong/stage2_512k.yaml}" "${STAGE2_NODES:-1}" \
    "${output[stage1]}" "${STAGE2_OVERRIDES:-}" "stage1"
train_step sft "${SFT_RECIPE:-$REPO/recipes/prolong/sft_64k.yaml}" "${SFT_NODES:-1}" \
    "${output[stage2]}" "${SFT_OVERRIDES:-}" "stage2"
if (( preflight )); then
    echo "  export_hf, eval: not submitted in preflight mode (no trained checkpoint to export)"
else
    step export_hf export_hf "sft" -- "${output[sft]}" "${output[export_hf]}" --tokenizer "$HF_MODEL"
    read -ra eval_args <<< "${EVAL_ARGS:---lengths 8K,16K,32K,64K}"
    step eval eval "export_hf" -- "${output[export_hf]}" --out "${output[eval]}" "${eval_args[@]}"
fi
(( ${#submitted[@]} > 0 )) || die "nothing to submit from '$from'"
echo "job ids: $run_dir/jobs.txt; logs: $LOG_DIR; cancel all: scancel ${submitted[*]}"
