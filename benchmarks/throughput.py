"""Training throughput of a recipe: tokens/s/GPU, TFLOP/s/GPU, MFU, peak memory.

Runs the real entry point (``megatron_ext.train``) under torchrun and summarizes its
per-iteration metrics after a warm-up. FLOPs count attention per document (sum of d^2),
so document masking is credited only for the work it actually does.

    python benchmarks/throughput.py --nproc 8 recipes/bench/llama3_8b_64k.yaml --stock --out bench.json

``--stock`` also runs Megatron's stock configuration at the same shape (plain causal
attention over the whole packed sequence: ``train.reset_attention_mask=false``).

Each JSON line also holds what ``tools/plan.py --calibrate`` needs (warm-up, device, the
launch environment) and the planner's prediction for the run next to the measurement. A run
that runs out of GPU memory is recorded as such (``"oom": true``) instead of failing the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ext.config import Recipe, RecipeError, find_recipe, load_recipe  # noqa: E402
from megatron_ext.net import free_port  # noqa: E402
from megatron_ext.training.cuda_env import cuda_env_defaults  # noqa: E402
from megatron_ext.training.metrics import peak_tflops  # noqa: E402

# Launch settings that change speed or memory, recorded with every row.
ENV_KEYS = ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_DEVICE_MAX_CONNECTIONS", "NVTE_FUSED_ATTN", "NVTE_FLASH_ATTN",
            "NVTE_ALLOW_NONDETERMINISTIC_ALGO", "NCCL_ALGO", "NCCL_PROTO", "NCCL_NVLS_ENABLE",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST", "UB_SKIPMC")


def _device_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True) \
        if shutil.which("nvidia-smi") else None
    return out.stdout.splitlines()[0].strip() if out and out.returncode == 0 and out.stdout.strip() else "unknown"


def _out_of_memory(log: str) -> str:
    """The log's out-of-memory message, if the run died of one."""
    lines = [line for line in log.splitlines() if "out of memory" in line.lower()]
    return lines[-1].strip()[:300] if lines else ""


def _prediction(row: dict) -> dict:
    """What the planner (megatron_ext/planning) predicts for this run, next to the measurement."""
    from megatron_ext.planning.fit import compare, measured_row
    from megatron_ext.planning.terms import Calibration

    try:
        predicted = compare([measured_row(row)], Calibration.load())[0]
    except Exception as e:  # a prediction must never lose a measurement
        return {"prediction_error": f"{type(e).__name__}: {e}"}
    return {"predicted_tokens_per_sec_per_gpu": round(predicted["tokens_per_sec_per_gpu"], 1),
            "predicted_memory_gib": round(predicted["memory_gib"], 2)}


def run(recipe: str, recipe_file: Path, r: Recipe, overrides: list, nproc: int, warmup: int, log_dir: Path,
        label: str) -> dict:
    """One measured launch of ``recipe`` (as named in the row; ``recipe_file`` resolved, ``r``
    loaded with ``overrides``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", label)  # a label is free text ("stock causal"); file names are not
    metrics = log_dir / f"{stem}.jsonl"
    metrics.unlink(missing_ok=True)
    cmd = ["torchrun", f"--nproc-per-node={nproc}", f"--master-port={free_port()}", "-m", "megatron_ext.train",
           str(recipe_file), *overrides, f"logging.metrics_jsonl={metrics}", "logging.progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log_dir / f"{stem}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    p, t = r.parallel, r.train
    device = _device_name()
    row = {
        "label": label, "recipe": recipe, "overrides": overrides, "gpus": nproc, "warmup": warmup,
        "device": device, "peak_tflops": peak_tflops(r, device) or 989.0,
        # What the ranks ran with: the launch's settings and the defaults the entry point adds.
        "env": {**{k: os.environ[k] for k in ENV_KEYS if k in os.environ}, **cuda_env_defaults(r, dict(os.environ))},
        "tp": p.tensor_model_parallel_size, "cp": p.context_parallel_size,
        "dp": nproc // (p.tensor_model_parallel_size * p.context_parallel_size),
        "cp_comm_type": p.cp_comm_type, "recompute": p.recompute_granularity, "fp8": r.precision.fp8,
        "seq_length": t.seq_length, "global_batch_size": t.global_batch_size, "train_iters": t.train_iters,
        "document_masking": t.reset_attention_mask,
    }
    if rc != 0 or len(rows) <= warmup:
        log = (log_dir / f"{stem}.log").read_text()
        oom = _out_of_memory(log)
        if oom:
            return {**row, "oom": True, "fit": False, "note": oom, "iterations_logged": len(rows),
                    **_prediction(row)}
        raise RuntimeError(f"{label}: exit code {rc}, {len(rows)} iterations logged\n{log[-3000:]}")
    steady = rows[warmup:]
    median = lambda key: statistics.median(m[key] for m in steady)  # noqa: E731
    row.update({
        "iterations_measured": len(steady),
        "tokens_per_sec_per_gpu": median("tokens_per_sec_per_gpu"), "tflops_per_gpu": median("tflops_per_gpu"),
        "mfu": median("mfu") if "mfu" in steady[0] else None, "iteration_time_s": median("iteration_time_s"),
        "peak_memory_gib": max(m["max_memory_gib"] for m in rows),
        "peak_reserved_gib": max(m["max_reserved_gib"] for m in rows),
    })
    return {**row, **_prediction(row)}


def markdown(rows: list) -> str:
    lines = ["| run | GPUs | TP×CP×DP | seq | doc masking | tokens/s/GPU (predicted) | TFLOP/s/GPU | MFU | s/iter | "
             "peak mem GiB (predicted) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        predicted = (f" ({r['predicted_tokens_per_sec_per_gpu']:.0f})", f" ({r['predicted_memory_gib']:.1f})") \
            if "predicted_memory_gib" in r else ("", "")
        shape = f"| {r['label']} | {r['gpus']} | {r['tp']}×{r['cp']}×{r['dp']} | {r['seq_length']} | {r['document_masking']} |"
        if r.get("oom"):
            lines.append(f"{shape} out of memory{predicted[0]} | | | | {predicted[1]} |")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{shape} {r['tokens_per_sec_per_gpu']:.0f}{predicted[0]} | {r['tflops_per_gpu']:.1f} | "
                     f"{mfu} | {r['iteration_time_s']:.2f} | {r['peak_memory_gib']:.1f}{predicted[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--nproc", type=int, default=1, help="GPUs (torchrun --nproc-per-node)")
    parser.add_argument("--warmup", type=int, default=5, help="iterations excluded from the medians")
    parser.add_argument("--label", default="document-masked")
    parser.add_argument("--stock", action="store_true", help="also run Megatron's stock causal attention")
    parser.add_argument("--out", type=Path, help="append the results (JSON lines) here")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "megatron_ext_bench")
    args = parser.parse_intermixed_args()
    if args.nproc < 1 or args.warmup < 0:
        parser.error("--nproc must be at least 1 and --warmup at least 0")
    runs = [(args.label, args.overrides)]
    if args.stock:
        runs.append(("stock causal", [*args.overrides, "train.reset_attention_mask=false"]))
    try:  # before launching: a bad key or layout is one line here, not a traceback per rank
        recipe_file = find_recipe(args.recipe).resolve()  # as named from here (the ranks run in REPO)
        recipes = [load_recipe(recipe_file, overrides, world_size=args.nproc) for _, overrides in runs]
    except RecipeError as e:
        parser.exit(2, f"error: {e}\n")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = [run(args.recipe, recipe_file, r, overrides, args.nproc, args.warmup, args.log_dir, label)
            for (label, overrides), r in zip(runs, recipes)]
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
