#!/usr/bin/env bash
# Performance sweep on 2 GPUs (2xH200): the measured baselines again, then each candidate
# setting, each as one benchmarks/throughput.py run appended to OUT/runs.jsonl (with the
# planner's prediction next to the measurement), plus per-iteration profiles.
#
#   benchmarks/perf_sweep.sh OUT                 # the core cases: stage1 + stage2 (~60 minutes on 2xH200)
#   benchmarks/perf_sweep.sh OUT stage1          # each group one device session, with its baseline, in order of
#   benchmarks/perf_sweep.sh OUT stage1b         #   priority: stage1 took 26 min (2026-11-30); stage1b ~14 and
#   benchmarks/perf_sweep.sh OUT stage2          #   stage2 ~22 (first 4 cases) are estimates (what does not fit waits)
#   benchmarks/perf_sweep.sh OUT onegpu          # the cases a 1-GPU machine can run (~16 min estimated)
#   benchmarks/perf_sweep.sh OUT all             # every case (about 2.5 hours)
#   benchmarks/perf_sweep.sh OUT s1_baseline s2_p2p ...
#   benchmarks/perf_sweep.sh OUT --queue         # the cases listed in OUT/queue, one per line, in order; append to
#                                                #   it (or reorder what has not started) while it runs; started
#                                                #   cases are in OUT/started.txt (a new queue needs a new OUT)
#   benchmarks/perf_sweep.sh --list
#   DRY_RUN=1 benchmarks/perf_sweep.sh OUT all   # no GPU: validate every case, print the planner's predictions
#
# Afterwards:  python tools/plan.py --calibrate $(python -c 'import json; print(*json.load(open("megatron_ext/planning/calibration.json"))["fitted_on"])') \
#                  OUT/runs.jsonl OUT/profile_*/profile_row.json     (the shipped constants' sources, then the new rows)
# shows how well the planner predicted every run, refits its constants (add --write to keep them).
# Stage-1 cases share the baseline's command (global batch 4, 7 iterations, 3 of warm-up), so
# they measure the very same samples; stage-2 cases likewise. A case that runs out of memory
# is recorded ("oom": true) and the sweep goes on; any other failure is listed in OUT/failed.txt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

S1=(recipes/bench/llama3_8b_64k.yaml train.global_batch_size=4 train.train_iters=7)
S2=(recipes/bench/llama3_8b_512k.yaml train.seq_length=131072 parallel.context_parallel_size=2
    train.global_batch_size=2 train.train_iters=6 data.synthetic.doc_length_max=131072
    data.synthetic.doc_length_median=49152 data.synthetic.doc_length_min=16384 model.max_position_embeddings=131072)
# 256K on CP 2: 128K tokens per GPU, the per-GPU load of 1M tokens on 8 GPUs (one iteration of
# warm-up, two measured: 1.7-3.3 min each, the first 5.4 min, with the optimizer state on the CPU).
S3=(recipes/bench/llama3_8b_512k.yaml train.seq_length=262144 parallel.context_parallel_size=2
    train.global_batch_size=2 train.train_iters=3 data.synthetic.doc_length_max=262144
    data.synthetic.doc_length_median=98304 data.synthetic.doc_length_min=32768 model.max_position_embeddings=262144)
NO_RECOMPUTE=(parallel.recompute_granularity=null parallel.recompute_method=null parallel.recompute_num_layers=null)
SELECTIVE_MLP=(parallel.recompute_granularity=selective parallel.recompute_method=null
               parallel.recompute_num_layers=null "parallel.recompute_modules=[mlp]")
OFFLOAD_INPUTS=(parallel.fine_grained_activation_offloading=true "parallel.offload_modules=[qkv_linear,core_attn,attn_proj]")
TP1_CP2=(parallel.tensor_model_parallel_size=1 parallel.context_parallel_size=2)
TP2_SELECTIVE_OFFLOAD=(parallel.tensor_model_parallel_size=2 parallel.context_parallel_size=1 "${SELECTIVE_MLP[@]}"
                       parallel.selective_recompute_num_layers=31 parallel.tp_comm_overlap=true
                       optimizer.optimizer_cpu_offload=true)
# The stage-2 proxy's samples (128K, documents 16K-128K) through 4 layers on one GPU: the
# compute side of the stage-2 candidates (recompute, FP8) measured where 2-GPU machines are not lent.
L4_128K=(recipes/bench/llama3_8b_512k.yaml model.num_layers=4 parallel.context_parallel_size=1
         train.seq_length=131072 train.global_batch_size=2 train.train_iters=6 data.synthetic.doc_length_max=131072
         data.synthetic.doc_length_median=49152 data.synthetic.doc_length_min=16384 model.max_position_embeddings=131072)
# Data-parallel balancing on 2 GPUs: 8 layers fit one GPU each; 16 samples per global batch.
DP2=(recipes/bench/llama3_8b_64k.yaml model.num_layers=8 parallel.tensor_model_parallel_size=1
     "${NO_RECOMPUTE[@]}" train.global_batch_size=16 train.train_iters=5)

# For a 1-GPU machine (measured 2026-11-30, sixth session): the owed 4-layer row, then stage 2's compute side.
ONEGPU=(layers4_document_vs_stock l4_128k_full l4_128k_selective_mlp l4_128k_fp8 l4_128k_fp8_selective_mlp
        l4_128k_none profile_l4_128k profile_l4_128k_fp8)
# As measured on 2026-11-30 (one session), then what that session left to measure:
STAGE1=(s1_baseline s1_selective_mlp s1_tp_comm_overlap s1_selective_tp_overlap s1_fp8_baseline
        s1_fp8_selective_tp_overlap profile_s1 s1_fp8_selective_mlp)
# The TP-overlap cases of stage 1 ran with NVLink multicast in TE's userbuffers; since then the
# entry point turns it off where NCCL has it off (as on the device hosts), so they run again.
STAGE1B=(s1_baseline s1_default_connections s1_selective_tp_overlap s1_ub_rs_rings s1_ub_fewer_sms
         s1_selective28_tp_overlap)
# Measured 2026-11-30: s2_baseline s2_p2p dp2_in_order dp2_balanced (second session),
# layers2_512k_one_document s3_256k_optimizer_offload (fourth). Left (s2_selective_offload
# out: predicted not to fit):
STAGE2=(s2_baseline s2_fp8_tp2_offload_inputs s2_fp8_tp2_selective_offload s2_fp8 profile_s2 s2_default_connections
        s2_tp2_selective_offload)
CORE=("${STAGE1[@]}" "${STAGE2[@]}")
ALL=(s1_baseline s1_default_connections s1_selective_mlp s1_block_24 s1_block_16 s1_none s1_cp2_selective
     s1_cp2_p2p_selective s1_tp_comm_overlap s1_selective_tp_overlap s1_ub_rs_rings s1_ub_fewer_sms
     s1_selective28_tp_overlap s1_fp8_baseline s1_fp8_selective_mlp
     s1_fp8_tp_overlap s1_fp8_selective_tp_overlap s1_offload_selective
     s1_optimizer_offload s1_dp2 s1_dp2_overlap s2_baseline s2_default_connections s2_p2p s2_all_gather s2_a2a_p2p
     s2_fp8 s2_selective_offload s2_block_30 s2_tp2 s2_tp2_selective_offload s2_fp8_tp2_selective_offload s2_fp8_tp2_offload_inputs
     s3_256k s3_256k_optimizer_offload s3_256k_tp2
     dp2_balanced dp2_in_order layers4_document_vs_stock layers2_512k_one_document l4_128k_full l4_128k_selective_mlp
     l4_128k_none l4_128k_fp8 l4_128k_fp8_selective_mlp profile_s1 profile_s2 profile_s3 profile_l4_128k
     profile_l4_128k_fp8)

record() {  # DRY_RUN: note the case for validation and prediction at the end
    python -c 'import json, sys; a = sys.argv[1:]
print(json.dumps({"label": a[0], "gpus": int(a[1]), "warmup": int(a[2]), "recipe": a[3], "overrides": a[4:]}))' \
        "$@" >> "$OUT/dry_run.jsonl"
}

bench() {  # bench LABEL NPROC WARMUP RECIPE [overrides...]
    [ -n "${DRY_RUN:-}" ] && { record "$@"; return; }
    local label=$1 nproc=$2 warmup=$3; shift 3
    echo "=== $label: $*" | tee -a "$OUT/sweep.log"
    python benchmarks/throughput.py --nproc "$nproc" --warmup "$warmup" --label "$label" ${STOCK:+"$STOCK"} \
        --out "$OUT/runs.jsonl" --log-dir "$OUT/logs" "$@" 2>&1 | tee -a "$OUT/sweep.log" \
        || echo "$label" >> "$OUT/failed.txt"
}

profile() {  # profile LABEL NPROC WARMUP RECIPE [overrides...]
    [ -n "${DRY_RUN:-}" ] && { record "$@"; return; }
    local label=$1 nproc=$2 warmup=$3; shift 3
    echo "=== $label (profile): $*" | tee -a "$OUT/sweep.log"
    python benchmarks/profile_iteration.py --nproc "$nproc" --warmup "$warmup" --out "$OUT/$label" "$@" \
        2>&1 | tail -40 | tee -a "$OUT/sweep.log" || echo "$label" >> "$OUT/failed.txt"
}

run_case() {
    case $1 in
        # Stage 1 (64K, TP2+SP), the baseline command: 5,133 tokens/s/GPU, 81.8 GiB before.
        s1_baseline)            bench "$1" 2 3 "${S1[@]}" ;;
        # CUDA's default of 8 hardware queues, as benchmark launches ran before the entry point
        # set 1 under sequence parallelism (2026-11-30): what that default alone is worth.
        s1_default_connections) CUDA_DEVICE_MAX_CONNECTIONS=8 bench "$1" 2 3 "${S1[@]}" ;;
        s1_selective_mlp)       bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" ;;
        s1_block_24)            bench "$1" 2 3 "${S1[@]}" parallel.recompute_method=block parallel.recompute_num_layers=24 ;;
        s1_block_16)            bench "$1" 2 3 "${S1[@]}" parallel.recompute_method=block parallel.recompute_num_layers=16 ;;
        s1_none)                bench "$1" 2 3 "${S1[@]}" "${NO_RECOMPUTE[@]}" ;;
        s1_cp2_selective)       bench "$1" 2 3 "${S1[@]}" "${TP1_CP2[@]}" "${SELECTIVE_MLP[@]}" ;;
        s1_cp2_p2p_selective)   bench "$1" 2 3 "${S1[@]}" "${TP1_CP2[@]}" parallel.cp_comm_type=p2p "${SELECTIVE_MLP[@]}" ;;
        s1_tp_comm_overlap)     CUDA_DEVICE_MAX_CONNECTIONS=1 bench "$1" 2 3 "${S1[@]}" parallel.tp_comm_overlap=true ;;
        s1_selective_tp_overlap) CUDA_DEVICE_MAX_CONNECTIONS=1 bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" parallel.tp_comm_overlap=true ;;
        # Userbuffer settings of our own (benchmarks/userbuffers/) against TE's defaults above.
        s1_ub_rs_rings)         bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" parallel.tp_comm_overlap=true \
                                    parallel.tp_comm_overlap_cfg=benchmarks/userbuffers/tp2_rs_rings.yaml ;;
        s1_ub_fewer_sms)        bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" parallel.tp_comm_overlap=true \
                                    parallel.tp_comm_overlap_cfg=benchmarks/userbuffers/tp2_fewer_sms.yaml ;;
        # selective recompute in 28 of the 32 layers: the 4 others keep their MLP activations (27 is
        # predicted to fit by 2 GiB; 28 leaves 5)
        s1_selective28_tp_overlap) bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" parallel.selective_recompute_num_layers=28 \
                                    parallel.tp_comm_overlap=true ;;
        s1_fp8_baseline)        bench "$1" 2 3 "${S1[@]}" precision.fp8=hybrid ;;
        s1_fp8_selective_mlp)   bench "$1" 2 3 "${S1[@]}" precision.fp8=hybrid "${SELECTIVE_MLP[@]}" ;;
        s1_fp8_tp_overlap)      CUDA_DEVICE_MAX_CONNECTIONS=1 bench "$1" 2 3 "${S1[@]}" precision.fp8=hybrid parallel.tp_comm_overlap=true ;;
        s1_fp8_selective_tp_overlap) CUDA_DEVICE_MAX_CONNECTIONS=1 bench "$1" 2 3 "${S1[@]}" precision.fp8=hybrid \
                                    "${SELECTIVE_MLP[@]}" parallel.tp_comm_overlap=true ;;
        s1_offload_selective)   bench "$1" 2 3 "${S1[@]}" "${SELECTIVE_MLP[@]}" "${OFFLOAD_INPUTS[@]}" ;;
        s1_optimizer_offload)   bench "$1" 2 3 "${S1[@]}" optimizer.optimizer_cpu_offload=true ;;
        s1_dp2)                 bench "$1" 2 3 "${S1[@]}" parallel.tensor_model_parallel_size=1 ;;
        s1_dp2_overlap)         bench "$1" 2 3 "${S1[@]}" parallel.tensor_model_parallel_size=1 parallel.overlap_param_gather=true ;;
        # Stage-2 proxy (128K, CP2 a2a): 3,487 tokens/s/GPU, 119.1 GiB before; p2p ran out of memory.
        s2_baseline)            bench "$1" 2 2 "${S2[@]}" ;;
        # CUDA's default of 8 hardware queues, as the 2026-11-30 stage-2 rows ran (the entry point
        # now sets 1 under CP too, as Megatron-LM requires before Blackwell).
        s2_default_connections) CUDA_DEVICE_MAX_CONNECTIONS=8 bench "$1" 2 2 "${S2[@]}" ;;
        s2_p2p)                 bench "$1" 2 2 "${S2[@]}" parallel.cp_comm_type=p2p ;;
        s2_all_gather)          bench "$1" 2 2 "${S2[@]}" parallel.cp_comm_type=all_gather ;;
        s2_fp8)                 bench "$1" 2 2 "${S2[@]}" precision.fp8=hybrid ;;
        s2_a2a_p2p)             bench "$1" 2 2 "${S2[@]}" parallel.cp_comm_type=a2a+p2p "parallel.hierarchical_context_parallel_sizes=[1,2]" ;;
        s2_selective_offload)   bench "$1" 2 2 "${S2[@]}" "${SELECTIVE_MLP[@]}" "${OFFLOAD_INPUTS[@]}" ;;
        s2_block_30)            bench "$1" 2 2 "${S2[@]}" parallel.recompute_method=block parallel.recompute_num_layers=30 ;;
        s2_tp2)                 bench "$1" 2 2 "${S2[@]}" parallel.tensor_model_parallel_size=2 parallel.context_parallel_size=1 ;;
        # The planner's best on 2 GPUs (fourth session's constants): TP2 with TP overlap, the MLP
        # recomputed in most layers, the optimizer state on the CPU to make room; FP8 predicted
        # 4,421 tokens/s/GPU then, 4,218 (1.22x) after the sixth session's refit. 31 of 32 layers:
        # ~8 GiB left for the memory model's error.
        s2_tp2_selective_offload) bench "$1" 2 2 "${S2[@]}" "${TP2_SELECTIVE_OFFLOAD[@]}" ;;
        s2_fp8_tp2_selective_offload) bench "$1" 2 2 "${S2[@]}" "${TP2_SELECTIVE_OFFLOAD[@]}" precision.fp8=hybrid ;;
        # The planner's pick after the sixth session's refit (output layer counted in bf16 under FP8):
        # TP2 + overlap, MLP recomputed, attention's inputs offloaded to the host (4,336 predicted,
        # 1.26x on these samples; rests on the prior for activation offloading, never measured).
        s2_fp8_tp2_offload_inputs) bench "$1" 2 2 "${S2[@]}" parallel.tensor_model_parallel_size=2 parallel.context_parallel_size=1 \
                                    "${SELECTIVE_MLP[@]}" "${OFFLOAD_INPUTS[@]}" parallel.tp_comm_overlap=true precision.fp8=hybrid ;;
        # 256K on CP2.
        s3_256k)                bench "$1" 2 1 "${S3[@]}" ;;
        s3_256k_optimizer_offload) bench "$1" 2 1 "${S3[@]}" optimizer.optimizer_cpu_offload=true ;;
        s3_256k_tp2)            bench "$1" 2 1 "${S3[@]}" parallel.tensor_model_parallel_size=2 parallel.context_parallel_size=1 ;;
        # Item 3: the same samples per global batch, dealt to the 2 ranks balanced or in order.
        dp2_balanced)           bench "$1" 2 2 "${DP2[@]}" data.balance_data_parallel=true ;;
        dp2_in_order)           bench "$1" 2 2 "${DP2[@]}" data.balance_data_parallel=false ;;
        # The 1-GPU row of the baseline table, now with its command recorded.
        layers4_document_vs_stock)  # --stock adds the same run with train.reset_attention_mask=false
            STOCK=--stock bench "$1" 1 3 recipes/bench/llama3_8b_64k.yaml model.num_layers=4 \
                parallel.tensor_model_parallel_size=1 "${NO_RECOMPUTE[@]}" train.train_iters=7 train.global_batch_size=4 ;;
        # Attention at 512K, where stage 2's cost rests on a prediction (8-GPU machines are rarely
        # lent): 2 layers on 1 GPU, one 512K document per sample, full recompute; the planner's
        # attention efficiency, fitted at 64K-128K, is tested at the real stage-2 length.
        # RoPE in PyTorch: 512K tokens on one GPU are past the fused kernel's 32-bit offsets
        # (with it, this case crashed in its second iteration: reports/performance.md).
        layers2_512k_one_document)
            bench "$1" 1 1 recipes/bench/llama3_8b_512k.yaml model.num_layers=2 parallel.context_parallel_size=1 \
                train.global_batch_size=1 train.train_iters=3 data.synthetic.single_document_fraction=1.0 \
                model.apply_rope_fusion=false ;;
        # Stage 2's compute on one GPU (4 layers, the proxy's samples): attention recomputed or not,
        # FP8 GEMMs or not, where attention is most of the work.
        l4_128k_full)           bench "$1" 1 2 "${L4_128K[@]}" ;;
        l4_128k_selective_mlp)  bench "$1" 1 2 "${L4_128K[@]}" "${SELECTIVE_MLP[@]}" ;;
        l4_128k_none)           bench "$1" 1 2 "${L4_128K[@]}" "${NO_RECOMPUTE[@]}" ;;
        l4_128k_fp8)            bench "$1" 1 2 "${L4_128K[@]}" precision.fp8=hybrid ;;
        l4_128k_fp8_selective_mlp) bench "$1" 1 2 "${L4_128K[@]}" "${SELECTIVE_MLP[@]}" precision.fp8=hybrid ;;
        profile_l4_128k)        profile "$1" 1 2 "${L4_128K[@]}" ;;
        profile_l4_128k_fp8)    profile "$1" 1 2 "${L4_128K[@]}" precision.fp8=hybrid ;;
        # Item 0: where the time goes in each baseline.
        profile_s1)             profile "$1" 2 3 "${S1[@]}" ;;
        profile_s2)             profile "$1" 2 2 "${S2[@]}" ;;
        profile_s3)             profile "$1" 2 1 "${S3[@]}" optimizer.optimizer_cpu_offload=true ;;
        *) echo "unknown case $1 (benchmarks/perf_sweep.sh --list)" >&2; return 2 ;;
    esac
}

next_queued() {  # the first case in OUT/queue not started yet (the file may grow while the sweep runs)
    local c
    while IFS= read -r c || [ -n "$c" ]; do
        c=${c%$'\r'}
        [ -z "$c" ] && continue
        grep -qxF -- "$c" "$OUT/started.txt" 2>/dev/null || { echo "$c"; return; }
    done < "$OUT/queue"
}

run_queue() {
    # OUT/queue.lock guards the queue: appending to it, and picking a case + marking it started.
    # OUT/runner.lock is held by the one sweep that works the queue; a second one exits at once.
    # It is let go under the queue lock when the queue is empty, so a case appended after that
    # finds no runner and the appender's new sweep runs it (tools/gpu/perf_on_device.sh).
    exec 8> "$OUT/runner.lock" 9> "$OUT/queue.lock"
    flock -n 8 || { echo "a sweep already works $OUT/queue"; exit 0; }
    local c
    while :; do
        flock 9
        c=$(next_queued)
        if [ -z "$c" ]; then flock -u 8; flock -u 9; return 0; fi
        echo "$c" >> "$OUT/started.txt"
        flock -u 9
        run_case "$c" 8>&- 9>&- || echo "$c (unknown case)" >> "$OUT/failed.txt"  # a typo must not end the session
    done
}

if [ "${1:-}" = "--list" ]; then
    echo "stage1: ${STAGE1[*]}"; echo "stage1b: ${STAGE1B[*]}"; echo "stage2: ${STAGE2[*]}"; echo "onegpu: ${ONEGPU[*]}"
    echo "all:  ${ALL[*]}"; exit 0
fi
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT [core|stage1|stage1b|stage2|onegpu|all|--queue|CASE ...]   ($0 --list)" >&2; exit 2
fi
OUT=$1; shift
mkdir -p "$OUT/logs"
cases=("$@")
if [ ${#cases[@]} -eq 0 ] || [ "${cases[0]}" = core ]; then
    cases=("${CORE[@]}")
elif [ "${cases[0]}" = stage1 ]; then
    cases=("${STAGE1[@]}")
elif [ "${cases[0]}" = stage1b ]; then
    cases=("${STAGE1B[@]}")
elif [ "${cases[0]}" = stage2 ]; then
    cases=("${STAGE2[@]}")
elif [ "${cases[0]}" = onegpu ]; then
    cases=("${ONEGPU[@]}")
elif [ "${cases[0]}" = all ]; then
    cases=("${ALL[@]}")
fi
if [ "${cases[0]:-}" = --queue ]; then
    [ -f "$OUT/queue" ] || { echo "$OUT/queue: no such file (one case per line)" >&2; exit 2; }
    run_queue
else
    rm -f "$OUT/dry_run.jsonl"  # (a queue's runs add to it)
    for c in "${cases[@]}"; do
        run_case "$c" || exit 2
    done
fi
if [ -n "${DRY_RUN:-}" ] && [ -f "$OUT/dry_run.jsonl" ]; then
    # Every case's recipe must be valid for its GPU count; show what the planner expects.
    python - "$OUT/dry_run.jsonl" <<'PY'
import json, sys, warnings
warnings.filterwarnings("ignore")
from megatron_ext.config import RecipeError, load_recipe
from megatron_ext.planning.fit import compare, measured_row
from megatron_ext.planning.terms import Calibration
calibration, bad = Calibration.load(), []
for line in open(sys.argv[1]):
    case = json.loads(line)
    try:
        load_recipe(case["recipe"], case["overrides"], world_size=case["gpus"])  # as a new run: files it reads too
        p = compare([measured_row(case)], calibration)[0]
    except RecipeError as e:
        bad.append(f"{case['label']}: {e}")
        continue
    print(f"{case['label']:<28} predicted {p['memory_gib']:6.1f} GiB (needs {p['needs_gib']:6.1f}), "
          f"{p['tokens_per_sec_per_gpu']:7,.0f} tokens/s/GPU")
if bad:
    sys.exit("invalid cases:\n" + "\n".join(bad))
PY
    exit $?
fi
echo "done: $OUT/runs.jsonl, profiles in $OUT/profile_*; failed: $(tr '\n' ' ' < "$OUT/failed.txt" 2>/dev/null)"
