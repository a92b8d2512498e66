"""Where one training iteration's GPU time goes: GEMMs, attention, recompute, TP/CP/DP
communication, idle. Runs a recipe under torch.profiler for one iteration after warm-up.

    python benchmarks/profile_iteration.py --nproc 2 recipes/bench/llama3_8b_64k.yaml train.global_batch_size=4 \\
        --warmup 3 --out runs/profile_64k

Every rank writes ``OUT/trace_rank{r}.json.gz`` (open it in Perfetto or chrome://tracing) and
``OUT/profile_rank{r}.{md,json}``: time by category (megatron_ext/profiling.py); rank 0's
table is printed. The run trains ``warmup + 1`` iterations and profiles the last one: the
profiler starts when iteration ``warmup`` has been logged and stops when the next one has
(the loop logs once per iteration, after the optimizer step).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ext.config import RecipeError, find_recipe, load_recipe  # noqa: E402
from megatron_ext.net import free_port  # noqa: E402


def _worker(out: Path, warmup: int, train_argv: list) -> int:
    """Inside each rank: train, profiling the iteration after ``warmup``."""
    import torch

    from megatron_ext import train
    from megatron_ext.profiling import categorize, kernels_from_trace
    from megatron_ext.training.metrics import MetricLogger

    rank = int(os.environ.get("RANK", "0"))
    logged = MetricLogger.step
    # Made once training runs: CUDA must not start before the entry point has set its
    # environment defaults (megatron_ext/training/cuda_env.py), and the profiler's CUDA
    # activity could start it.
    profiler = None

    def step(self, iteration, *args, **kwargs):
        nonlocal profiler
        result = logged(self, iteration, *args, **kwargs)
        if iteration == warmup:
            torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            profiler.start()
        elif iteration == warmup + 1:
            torch.cuda.synchronize()
            profiler.stop()
            run = {"label": out.name, "recipe": _as_recorded(Path(train_argv[0])), "overrides": train_argv[1:],
                   "gpus": int(os.environ.get("WORLD_SIZE", "1")),
                   "profiled_iteration": warmup}  # 0-based: the global batch of the step after the warm-up
            _report(profiler, out, rank, kernels_from_trace, categorize, run)
        return result

    MetricLogger.step = step
    return train.main([*train_argv, f"train.train_iters={warmup + 1}", "train.exit_after_iters=null",
                       "checkpoint.save=null", "checkpoint.save_interval=null"])


def _as_recorded(recipe: Path) -> str:
    """Relative to the repository, as benchmark rows name recipes (the planner reads them on
    other machines)."""
    return str(recipe.relative_to(REPO)) if recipe.is_relative_to(REPO) else str(recipe)


def _report(profiler, out: Path, rank: int, kernels_from_trace, categorize, run: dict) -> None:
    trace = out / f"trace_rank{rank}.json"
    profiler.export_chrome_trace(str(trace))
    data = json.loads(trace.read_text())
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    kernels = kernels_from_trace(data)
    if not kernels:
        text = "no GPU kernels in the profiled iteration (a CPU run?)"
        (out / f"profile_rank{rank}.md").write_text(text + "\n")
        print(f"rank {rank}: {text}", flush=True)
        return
    table = categorize(kernels)
    split = {"window_ms": table.window_us / 1e3, "idle_ms": table.idle_us / 1e3,
             "by_category_ms": {k: v / 1e3 for k, v in table.by_category.items()},
             "exposed_ms": {k: v / 1e3 for k, v in table.exposed.items()}}
    (out / f"profile_rank{rank}.md").write_text(table.markdown() + "\n")
    (out / f"profile_rank{rank}.json").write_text(json.dumps(split, indent=1))
    if rank == 0:
        print(table.markdown(), flush=True)
        # The run with its time split, as tools/plan.py --calibrate reads it (planning/profiled.py).
        (out / "profile_row.json").write_text(json.dumps({**run, **split}, indent=1))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return _worker(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--nproc", type=int, default=1, help="GPUs (torchrun --nproc-per-node)")
    parser.add_argument("--warmup", type=int, default=3, help="iterations before the profiled one")
    parser.add_argument("--out", type=Path, required=True, help="folder for traces and tables")
    args = parser.parse_intermixed_args()
    if args.nproc < 1 or args.warmup < 1:  # the profiler starts when a warm-up iteration has been logged
        parser.error("--nproc and --warmup must be at least 1")
    try:  # before launching: a bad key or layout is one line here, not a traceback per rank
        recipe_file = find_recipe(args.recipe).resolve()
        load_recipe(recipe_file, args.overrides, world_size=args.nproc)
    except RecipeError as e:
        parser.exit(2, f"error: {e}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = ["torchrun", f"--nproc-per-node={args.nproc}", f"--master-port={free_port()}", __file__, "--worker",
           str(args.out.resolve()), str(args.warmup), str(recipe_file), *args.overrides, "logging.progress_bar=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
