#!/usr/bin/env bash
# benchmarks/perf_sweep.sh in the background on a GPU machine, fed from a queue that later
# calls extend once the first measurements say what to try next (a device session is 30 minutes):
#   bash tools/gpu/perf_on_device.sh queue CASE...   append the cases; start the sweep unless it runs
#   bash tools/gpu/perf_on_device.sh status          progress, the rows measured so far, $OUT/perf_out.tgz
# Results in $PERF_ROOT (default /tmp/perf): runs.jsonl, logs/, profile_*/ (traces stay there: too large to bring back).
# SITE: where the GPU wheels were installed (.gpu/install.sh: /tmp/site).
set -uo pipefail
# The lent GPU hosts forbid NVLink multicast: off for NCCL and PyTorch unless the caller chose (the
# training entry point then keeps TE's userbuffers off it too).
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1} \
    NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
root=$(realpath -m "${PERF_ROOT:-/tmp/perf}")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case ${1:-} in
    queue)
        shift
        mkdir -p "$root"
        # Under the sweep's queue lock (benchmarks/perf_sweep.sh run_queue); then a sweep is started
        # every time: one that finds another working the queue exits at once, and one started after
        # the last one let go (queue empty) runs what was just added.
        ( flock 9 && printf '%s\n' "$@" >> "$root/queue" ) 9> "$root/queue.lock"
        if flock -n "$root/runner.lock" true; then echo "queued; sweep started: $root/runner.log"; else echo "queued behind the running sweep: $*"; fi
        cd "$repo" && setsid nohup bash benchmarks/perf_sweep.sh "$root" --queue >> "$root/runner.log" 2>&1 < /dev/null & ;;
    status)
        grep -E "^=== " "$root/sweep.log" 2>/dev/null | tail -n 1
        latest=$(ls -t "$root"/logs/*.log 2>/dev/null | head -n 1)
        [[ -n $latest ]] && { grep -E "^iter |out of memory|Error|not in effect" "$latest" | tail -n 3; }
        echo "failed: $(tr '\n' ' ' < "$root/failed.txt" 2>/dev/null)"
        grep -l "MC initialized" "$root"/logs/*.log 2>/dev/null | sed 's/^/NVLINK MULTICAST USED (forbidden on these hosts): /'
        if [[ -s $root/runs.jsonl ]]; then
            PYTHONPATH="${SITE:-/tmp/site}:$repo" "${PYTHON:-python3}" -c 'import json, sys
sys.path.insert(0, sys.argv[2])
from throughput import markdown
print(markdown([json.loads(line) for line in open(sys.argv[1])]))' "$root/runs.jsonl" "$repo/benchmarks" || true
        fi
        nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
        if [[ -n ${OUT:-} ]]; then
            tar czf "$OUT/perf_out.tgz" --exclude='trace_rank*' -C "$(dirname "$root")" "$(basename "$root")" 2>/dev/null || true
        fi ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
