#!/usr/bin/env bash
# The GPU suite in one call on a 2-GPU machine, as run for reports/gpu_training.md:
# first the 2-GPU checks (CP/TP parity, resume across a layout change), then the single-GPU
# parts side by side (GPU 0: pipeline + exact resume, HF conversion; GPU 1: FP8 tracking,
# FP8 attention); the tiny runs use a few % of a GPU each. Each part has its own time limit,
# so one that hangs costs only its share. Results (JSON, metrics, logs) go to OUT_DIR/<part>/.
#
#   tests/gpu/run_device_suite.sh OUT_DIR [MULTI_GPU_LIMIT_S] [SINGLE_GPU_LIMIT_S]
set -uo pipefail
out=${1:?usage: run_device_suite.sh OUT_DIR [MULTI_GPU_LIMIT_S] [SINGLE_GPU_LIMIT_S]}
multi_limit=${2:-160}
single_limit=${3:-360}
cd "$(dirname "$0")/../.." || exit
mkdir -p "$out"/multi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out"/gpus.csv
date -u +%FT%TZ > "$out"/date.txt

if (( $(nvidia-smi -L | wc -l) >= 2 )); then
    GPU_RESULTS_DIR="$out"/multi timeout -k 10 "$multi_limit" \
        python -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_multi_gpu.py > "$out"/multi/pytest.log 2>&1
    echo "multi-GPU exit $?" >> "$out"/exit_codes.txt
fi

single() {  # GPU, name, command...: one part in the background under the time limit
    local gpu=$1 name=$2
    shift 2
    ( export CUDA_VISIBLE_DEVICES=$gpu GPU_RESULTS_DIR="$out/$name"
      timeout -k 10 "$single_limit" "$@" > "$out/$name/run.log" 2>&1
      echo "$name exit $?" >> "$out"/exit_codes.txt ) &
}
second=$(( $(nvidia-smi -L | wc -l) >= 2 ? 1 : 0 ))
mkdir -p "$out"/pipeline "$out"/convert "$out"/fp8 "$out"/fp8_attention
pytest_gpu=(python -m pytest -m gpu -q -p no:cacheprovider tests/gpu/test_single_gpu.py)
single 0 pipeline "${pytest_gpu[@]}" -k "pipeline or resumes"
single 0 convert python tools/gpu/check_conversion.py --out "$out"/convert --work /tmp/convert_gpu
single "$second" fp8 "${pytest_gpu[@]}" -k fp8_tracks
single "$second" fp8_attention "${pytest_gpu[@]}" -k fp8_attention
wait
cat "$out"/exit_codes.txt
