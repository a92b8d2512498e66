#!/usr/bin/env python
"""Summarize miniature results: summary.json (one entry per run), summary.md, loss curves, recall plot.

    python tools/miniature/summarize.py OUT [MORE_OUT ...] [--write DIR]

Each OUT is a ``tools/miniature/run.py --out`` folder (eval/<label>/, runs/<label>/). Results of
several sessions merge by label: one run's recall scores and held-out losses are joined, a later
folder winning where both measured the same thing (e.g. the base model's recall from one session,
its loss on a newly added held-out set from another).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

ORDER = ("base", "main", "theta_unchanged", "long_only", "no_doc_masking", "main_32k")
SMOOTHING = 10  # steps; per-step loss varies with the mix of domains in each global batch


def collect(outs: list[Path]) -> tuple[dict, dict, dict]:
    """label -> eval folders (oldest first), label -> run.json, label -> metrics rows."""
    evals, infos, metrics = {}, {}, {}
    for out in outs:
        for results in sorted(out.glob("eval/*/results.json")):
            evals.setdefault(results.parent.name, []).append(results.parent)
        for info in sorted(out.glob("runs/*/run.json")):
            infos[info.parent.name] = json.loads(info.read_text())
            rows = info.with_name("metrics.jsonl")
            metrics[info.parent.name] = [json.loads(line) for line in rows.read_text().splitlines()] if rows.exists() else []
    return evals, infos, metrics


def merged(folders: list[Path]):
    """One EvalRun from the evaluations of one model in several folders (later ones win)."""
    from megatron_ext.eval.results import EvalRun

    run = EvalRun.load(folders[0])
    for folder in folders[1:]:
        run.merge(EvalRun.load(folder))
    return run


def entry(label: str, run, info: dict | None) -> dict:
    loss = {name: r["loss"] for name, r in sorted(run.text_loss.items())}
    base = {"rotary_base": run.model.get("rope_theta"), "seq_length": run.model.get("max_position_embeddings"),
            "tokens_trained": 0}
    fields = {k: info[k] for k in ("rotary_base", "seq_length", "tokens_trained", "document_masking", "domains",
                                   "train_iters", "global_batch_size", "lr")} if info else base
    return {"label": label, **fields, "recall": {t: {str(n): s for n, s in sorted(per.items())} for t, per in run.scores.items()},
            "short_text_loss": loss, "eval_complete": run.complete}


def sort_key(label: str):
    return (ORDER.index(label) if label in ORDER else len(ORDER), label)


def plot_losses(metrics: dict, infos: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lab for lab in sorted(metrics, key=sort_key) if metrics[lab]]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label in labels:
        per_iter = infos[label]["global_batch_size"] * infos[label]["seq_length"] / 1e6
        rows = metrics[label]
        x, y = [r["iteration"] * per_iter for r in rows], [r["loss"] for r in rows]
        window = [sum(y[max(0, i - SMOOTHING + 1):i + 1]) / len(y[max(0, i - SMOOTHING + 1):i + 1]) for i in range(len(y))]
        line, = ax.plot(x, window, label=f"{label} (mean of {SMOOTHING} steps)", linewidth=1.5)
        ax.plot(x, y, color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("tokens trained (M)")
    ax.set_ylabel("training loss (token-averaged)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("outs", nargs="+", type=Path)
    p.add_argument("--write", type=Path, help="where to write (default: the first OUT)")
    args = p.parse_args(argv)
    from megatron_ext.eval.plots import plot_compare
    from megatron_ext.eval.report import compare_table

    evals, infos, metrics = collect(args.outs)
    if not evals:
        print(f"error: no eval/*/results.json under {', '.join(map(str, args.outs))}", file=sys.stderr)
        return 2
    labels = sorted(evals, key=sort_key)
    runs = {label: merged(evals[label]) for label in labels}
    write = args.write or args.outs[0]
    write.mkdir(parents=True, exist_ok=True)
    summary = [entry(label, runs[label], infos.get(label)) for label in labels]
    (write / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = compare_table([runs[lab] for lab in labels], labels)
    (write / "summary.md").write_text("# Miniature ProLong: results\n\n" + table)
    plot_compare([runs[lab] for lab in labels], labels, write / "recall_vs_length.png")
    plot_losses(metrics, infos, write / "loss_curves.png")
    print(table)
    print(f"wrote {write / 'summary.json'}, summary.md, recall_vs_length.png, loss_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
