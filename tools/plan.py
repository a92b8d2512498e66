#!/usr/bin/env python
"""Plan a recipe's layout: memory per GPU and predicted tokens/s/GPU of candidate layouts.

    python tools/plan.py recipes/prolong/stage1_64k.yaml --gpus 8 --gpu-memory 140
    python tools/plan.py RECIPE [key=value ...] --gpus N --gpu-memory GiB --check   # before submitting
    python tools/plan.py --calibrate runs.jsonl [more.jsonl] [profile_row.json] [--write]   # refit the constants

For every TP x CP x comm-type layout it shows the fastest recompute/offload setting that fits,
refuses the layouts that cannot run (the recipe validator's reason, or the memory they would
need), and recommends the fastest, with the overrides that select it. ``--check`` plans only
the recipe's own layout and exits 2 if it would not fit. Predictions come from the model in
megatron_ext/planning/ with constants fitted on measured runs (rows of
``benchmarks/throughput.py --out``); ``--calibrate`` refits them from scratch on the rows it
is given (a constant they do not determine returns to its prior, so pass every run that should
count) and shows how well the planner reproduces every row; profiles of
``benchmarks/profile_iteration.py`` (its ``profile_row.json``) add the measured time split. Without the recipe's prepared data
on this machine it plans on assumed document lengths and says so; data that is here but
refused (part missing, another tokenizer, too small for max_epochs) is an error.

Exit codes: 0 = ok, 2 = invalid recipe or data, unreadable input, or (--check) a layout that does not fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ext.config import load_recipe  # noqa: E402
from megatron_ext.planning.fit import compare, comparison_table, fit, load_rows  # noqa: E402
from megatron_ext.planning.layouts import Planner, overrides_text, refusal  # noqa: E402
from megatron_ext.planning.profiled import compare_profiles, load_profile  # noqa: E402
from megatron_ext.planning.terms import DEFAULT_CALIBRATION, Calibration  # noqa: E402
from megatron_ext.planning.workload import workload_dataset  # noqa: E402
from megatron_ext.quiet import hide_unactionable_warnings  # noqa: E402

COLUMNS = ("TP", "CP", "DP", "comm", "recompute", "offload")


def _table(planner: Planner, evaluations, recommended=None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " | memory GiB (needs / PyTorch peak) | tokens/s/GPU | |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for ev in evaluations:
        cells = ev.describe()
        cells["DP"] = str(planner.gpus // (int(cells["TP"]) * int(cells["CP"])))
        why = refusal(ev, planner.gpu_memory_gib)
        mem = "-" if ev.problem else f"{ev.needs_gib:.1f} / {ev.memory_gib:.1f}"
        speed = "-" if why else f"{ev.tokens_per_sec_per_gpu:,.0f}"
        note = f"refused: {why}" if why else ("**recommended**" if ev is recommended else "")
        if not why and ev.unmeasured:
            note += ("; " if note else "") + "to measure: rests on the priors of " + ", ".join(ev.unmeasured)
        lines.append("| " + " | ".join(cells[c] for c in COLUMNS) + f" | {mem} | {speed} | {note} |")
    return "\n".join(lines)


def plan(args, calibration: Calibration) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    peak = args.peak_tflops or recipe.logging.peak_tflops or 989.0
    dataset, data_note = workload_dataset(recipe, args.short_document)
    planner = Planner(recipe, args.gpus, args.gpu_memory, calibration, dataset, peak, args.batches)
    print(f"recipe {recipe.name} on {args.gpus} GPUs x {args.gpu_memory:g} GiB, peak {peak:g} TFLOP/s; "
          f"constants: {', '.join(calibration.fitted_on) or 'priors only'}")
    if data_note:
        print(f"data: {data_note}")
    if recipe.parallel.tp_comm_overlap_cfg:
        print(f"note: parallel.tp_comm_overlap_cfg {recipe.parallel.tp_comm_overlap_cfg}: not modelled; "
              f"the TP overlap is predicted with Transformer Engine's default userbuffer settings")
    if args.check:
        own = planner.evaluate({})
        why = refusal(own, args.gpu_memory)
        print(_table(planner, [own]))
        if why:
            print(f"error: {args.recipe}: this layout will not run: {why}", file=sys.stderr)
            return 2
        return 0
    evaluations = planner.best_per_layout()
    best = planner.recommend(evaluations)
    print(_table(planner, evaluations, best))
    if best is None:
        speculative = any(refusal(e, args.gpu_memory) is None for e in evaluations)
        why = " on measured constants alone (the rows marked 'to measure' might)" if speculative else ""
        print(f"error: no layout of {args.recipe} fits {args.gpus} GPUs x {args.gpu_memory:g} GiB{why}", file=sys.stderr)
        return 2
    print(f"\nrecommended: {overrides_text(best.overrides, recipe) or 'the recipe as it is'}")
    t = recipe.train
    tokens = t.train_iters * t.global_batch_size * t.seq_length
    print(f"schedule: {tokens / 1e9:.2f}B tokens ({t.train_iters} iterations) = "
          f"{tokens / best.tokens_per_sec_per_gpu / 3600:,.0f} GPU-hours at the recommended layout's prediction")
    return 0


def calibrate(args, calibration: Calibration) -> int:
    rows = load_rows(p for p in args.calibrate if p.suffix != ".json")
    profiles = [load_profile(p) for p in args.calibrate if p.suffix == ".json"]
    fitted = fit(rows, calibration, [str(p) for p in args.calibrate], profiles)
    print(comparison_table(compare(rows, fitted)))
    if profiles:
        print("\n" + compare_profiles(profiles, fitted))
    changed = {k: (calibration.constants[k], v) for k, v in fitted.constants.items() if v != calibration.constants[k]}
    print("\nconstants (before -> after): " + ", ".join(f"{k} {a:.4g} -> {b:.4g}" for k, (a, b) in changed.items()))
    if args.write:
        fitted.save(args.calibration)
        print(f"wrote {args.calibration}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--gpus", type=int, help="GPUs the job gets")
    parser.add_argument("--gpu-memory", type=float, help="memory of one GPU in GiB (H100 80GB: 79.6, H200: 140.4)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of one GPU (default: logging.peak_tflops or 989)")
    parser.add_argument("--batches", type=int, default=16, help="global batches of the recipe's data to count work on")
    parser.add_argument("--short-document", type=int, default=4096,
                        help="when the recipe's data is not here: document length assumed for non-long domains")
    parser.add_argument("--check", action="store_true", help="plan only the recipe's own layout; exit 2 if it does not fit")
    parser.add_argument("--calibrate", type=Path, nargs="+", metavar="ROWS.jsonl",
                        help="refit the constants from scratch on these runs (the others return to their priors); "
                             "a profile_row.json of benchmarks/profile_iteration.py adds its measured time split")
    parser.add_argument("--write", action="store_true", help="with --calibrate: save the refitted constants")
    parser.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION, help="constants file")
    args = parser.parse_intermixed_args(argv)
    hide_unactionable_warnings()  # "TE/Apex not installed" on a planning machine
    try:
        calibration = Calibration.load(args.calibration)
        if args.calibrate:
            return calibrate(args, calibration)
        if not args.recipe or not args.gpus or not args.gpu_memory:
            parser.error("RECIPE, --gpus and --gpu-memory are required (or --calibrate ROWS.jsonl)")
        if args.gpus < 1 or args.gpu_memory <= 0:
            parser.error("--gpus and --gpu-memory must be positive")
        return plan(args, calibration)
    except (OSError, ValueError, KeyError) as e:  # a RecipeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
