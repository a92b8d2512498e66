#!/usr/bin/env python
"""Put several evaluation runs side by side: one markdown table and one plot.

    python tools/compare_evals.py runs/eval/base runs/eval/stage1 runs/eval/stage2 runs/eval/sft \\
        --labels base,stage1,stage2,sft --out runs/eval/compare

Each run is a tools/eval.py output directory (or its results.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="tools/eval.py output directories or results.json files")
    p.add_argument("--labels", help="comma-separated names, one per run (default: directory names)")
    p.add_argument("--out", required=True, help="directory for comparison.md and comparison.png")
    args = p.parse_args(argv)

    from megatron_ext.eval.plots import plot_compare
    from megatron_ext.eval.report import compare_table
    from megatron_ext.eval.results import EvalRun

    try:
        runs = [EvalRun.load(r) for r in args.runs]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [Path(r).resolve().name if Path(r).is_dir() else Path(r).resolve().parent.name for r in args.runs]
    if len(labels) != len(runs):
        print(f"error: {len(labels)} labels for {len(runs)} runs", file=sys.stderr)
        return 2
    if len(set(labels)) != len(labels):
        print(f"error: labels must differ, got {labels} (pass --labels)", file=sys.stderr)
        return 2
    for run, label in zip(runs, labels):
        if not run.complete:
            print(f"warning: run {label!r} is incomplete (interrupted); its missing lengths show as –", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(runs, labels)
    (out / "comparison.md").write_text("# Comparison: " + " vs ".join(labels) + "\n\n" + table)
    plot_compare(runs, labels, out / "comparison.png")
    print(table)
    print(f"wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
