#!/usr/bin/env bash
# Submit one step with the site env file's settings (slurm/site.env, or SITE_ENV=PATH):
#   slurm/submit.sh [SBATCH_OPTION=VALUE ...] STEP ARGS ...
#
#   train      RECIPE.yaml [key=value ...]                    slurm/train.sbatch
#   data       PLAN.sh [ARGS ...]                             slurm/data.sbatch
#   import_hf  HF_DIR OUT_DIR [options]                       slurm/import_hf.sbatch
#   export_hf  CHECKPOINT OUT_DIR --tokenizer HF_DIR [...]    slurm/export_hf.sbatch
#   eval       HF_DIR --out DIR [options]                     slurm/eval.sbatch
#
# SBATCH_OPTIONs (--nodes=4, --time=2:00:00, --dependency=afterok:123 ...) win over the site's.
# Prints the job id and its log file; the run info (resolved recipe, git commit, environment)
# goes next to the log, in LOG.info/.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

options=()
while [[ ${1:-} == -* ]]; do
    [[ $1 == -h || $1 == --help ]] && { usage "$0"; exit 0; }
    [[ $1 == --*=* ]] || die "sbatch options are written --name=value here: '$1'"
    options+=("$1")
    shift
done
(( $# >= 1 )) || die "no step given (steps: ${STEPS[*]}); see slurm/submit.sh --help"
load_site_env
submit_step "$1" "${options[@]}" -- "${@:2}"
echo "$1: job $JOB_ID, log $(job_field "$JOB_ID" StdOut)"
