"""Time by category from profiler events: made-up kernels and a made-up Chrome trace, and
the profiling benchmark's hook into the loop (a CPU run)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ext.profiling import Kernel, categorize, kernels_from_trace

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTED = ("ProfilerStep#4", "autograd::engine::evaluate_function: CheckpointFunctionBackward",
                "CheckpointFunctionBackward")


def test_categories_exposed_communication_and_idle():
    kernels = [
        Kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", 0, 100),
        Kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", 100, 200),
        Kernel("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", 250, 100,
               group="TENSOR_MODEL_PARALLEL_GROUP"),                      # 50 us hidden behind attention
        Kernel("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", 400, 50, CHECKPOINTED + ("aten::mm",)),
        Kernel("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNN", 450, 50,
               CHECKPOINTED + ("autograd::engine::evaluate_function: MmBackward0", "aten::mm")),
        Kernel("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7", 500, 200),
        Kernel("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", 700, 50, group="CONTEXT_PARALLEL_GROUP"),
        Kernel("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL", 750, 50, group="DATA_PARALLEL_GROUP_WITH_CP"),
        Kernel("multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>>", 850, 30),
        Kernel("Memcpy DtoH (Device -> Pinned)", 880, 20, is_copy=True),
    ]
    table = categorize(kernels)
    assert table.window_us == 900
    assert table.by_category == {"GEMMs": 150, "attention forward": 200, "TP communication": 100,
                                 "recompute (forward again)": 50, "attention backward": 200,
                                 "CP communication": 50, "DP communication": 50, "optimizer step": 30,
                                 "memory copies": 20}
    assert table.exposed == {"TP communication": 50, "CP communication": 50, "DP communication": 50}
    assert table.idle_us == 100                                            # 350-400 and 800-850
    rows = table.rows()
    assert rows[-1][0].startswith("idle") and rows[-1][2] == pytest.approx(100 / 900)
    assert "| attention forward | 0.2 |" in table.markdown()


def test_a_window_clips_kernels():
    table = categorize([Kernel("gemm", 0, 100), Kernel("gemm", 150, 100)], window=(50, 200))
    assert table.by_category == {"GEMMs": 100} and table.idle_us == 50


def test_no_kernels_is_an_error_that_says_why():
    with pytest.raises(ValueError, match="no GPU kernels"):
        categorize([])


def test_kernels_from_a_chrome_trace():
    trace = {"traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "record_param_comms", "pid": 1, "tid": 7, "ts": 10, "dur": 20,
         "args": {"Collective name": "_allgather_base", "Process Group Description": "TENSOR_MODEL_PARALLEL_GROUP"}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 7, "ts": 15, "dur": 2,
         "args": {"correlation": 99}},
        {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllGather_RING_LL", "pid": 0, "tid": 20, "ts": 40,
         "dur": 30, "args": {"correlation": 99, "stream": 20}},
        {"ph": "X", "cat": "cpu_op", "name": "autograd::engine::evaluate_function: CheckpointFunctionBackward",
         "pid": 1, "tid": 8, "ts": 100, "dur": 50, "args": {}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 8, "ts": 110, "dur": 5, "args": {}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 8, "ts": 111, "dur": 2,
         "args": {"correlation": 100}},
        {"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "pid": 0, "tid": 7, "ts": 120, "dur": 10,
         "args": {"correlation": 100}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "pid": 0, "tid": 7, "ts": 140, "dur": 5, "args": {}},
        {"ph": "i", "name": "marker", "ts": 0},
    ]}
    comm, gemm, copy = kernels_from_trace(trace)
    assert comm == Kernel("ncclDevKernel_AllGather_RING_LL", 40, 30, ("record_param_comms",), "TENSOR_MODEL_PARALLEL_GROUP")
    assert gemm.launched_under == ("autograd::engine::evaluate_function: CheckpointFunctionBackward", "aten::mm")
    assert copy.is_copy and copy.launched_under == ()
    table = categorize([comm, gemm, copy])
    assert table.by_category == {"TP communication": 30, "recompute (forward again)": 10, "memory copies": 5}


def test_profile_benchmark_hooks_the_loop_on_cpu(tmp_path, python_env):
    cmd = [sys.executable, "benchmarks/profile_iteration.py", "--nproc", "1", "--warmup", "1", "--out", str(tmp_path),
           "recipes/tiny/prolong_stage1.yaml", "train.device=cpu", "precision.bf16=false", "train.seq_length=128",
           "train.global_batch_size=2", "model.vocab_size=512", "data.synthetic.vocab_size=null",
           "data.num_workers=0", "logging.tensorboard_dir=null", "scheduler.lr_warmup_fraction=null"]
    out = subprocess.run(cmd, cwd=REPO, env=python_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trace = json.loads(gzip.open(tmp_path / "trace_rank0.json.gz").read())
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])   # the profiled iteration ran
    assert "no GPU kernels" in (tmp_path / "profile_rank0.md").read_text()
