"""PNG figures: needle heatmap (context length x depth), score vs length, run comparison."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt
import numpy as np

from megatron_ext.eval.report import format_length
from megatron_ext.eval.results import EvalRun


def _beyond(lengths: list[int], trained: int | None) -> bool:
    return bool(trained) and any(n > trained for n in lengths)


def _mark_trained_length(ax, lengths: list[int], trained: int | None, categorical: bool) -> None:
    if not _beyond(lengths, trained):
        return
    # Categorical axis: between the last column within the window and the first beyond it.
    x = sum(n <= trained for n in lengths) - 0.5 if categorical else trained
    ax.axvline(x, color="black", linestyle="--", linewidth=1.2)
    if not categorical:
        ax.annotate(f"trained length {format_length(trained)}", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8)


def plot_needle_heatmap(run: EvalRun, path: Path) -> Path | None:
    """One panel per task whose documents record the needle depth."""
    grid = run.depth_grid()
    if not grid:
        return None
    tasks = sorted(grid)
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.2 + 0.9 * max(len(g) for g in grid.values()) * len(tasks) + 1.5, 4.2), squeeze=False, gridspec_kw={"wspace": 0.35})
    trained = run.model.get("max_position_embeddings")
    for ax, task in zip(axes[0], tasks):
        lengths = sorted(grid[task])
        depths = sorted({d for by_depth in grid[task].values() for d in by_depth})
        cells = np.array([[grid[task][n].get(d, math.nan) for n in lengths] for d in depths])
        image = ax.imshow(np.ma.masked_invalid(cells), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
        for (i, j), v in np.ndenumerate(cells):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        if ax is axes[0][0]:
            ax.set_ylabel("depth of the needle in the context")
        ax.set_title(task, fontsize=10)
        _mark_trained_length(ax, lengths, trained, categorical=True)
    fig.colorbar(image, ax=axes[0].tolist(), label="recall", shrink=0.9)
    title = f"Needle in a haystack: {Path(str(run.model.get('path', ''))).name} (recall x 100)"
    if any(_beyond(sorted(grid[t]), trained) for t in tasks):
        title += f"; dashed line: trained length {format_length(trained)}"
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _length_axis(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def plot_score_vs_length(run: EvalRun, path: Path) -> Path | None:
    lengths = run.lengths
    if not lengths:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for task in sorted(run.scores):
        xs = sorted(run.scores[task])
        ax.plot(xs, [run.scores[task][n] for n in xs], marker="o", linewidth=1, alpha=0.75, label=task)
    ax.plot(lengths, [run.average(n) for n in lengths], color="black", linewidth=2.5, marker="s", label="average")
    _length_axis(ax, lengths)
    _mark_trained_length(ax, lengths, run.model.get("max_position_embeddings"), categorical=False)
    ax.set_ylabel("score")
    ax.set_title(f"Recall vs context length: {Path(str(run.model.get('path', ''))).name}", fontsize=11)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_compare(runs: list[EvalRun], labels: list[str], path: Path) -> Path:
    """Average recall and each task in small multiples, one line per run."""
    tasks = sorted({t for r in runs for t in r.scores})
    panels = ["average"] + tasks
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    all_lengths = sorted({n for r in runs for n in r.lengths})
    for ax, panel in zip(axes.flat, panels):
        for run, label in zip(runs, labels):
            if panel == "average":
                xs = run.lengths
                ys = [run.average(n) for n in xs]
            else:
                xs = sorted(run.scores.get(panel, {}))
                ys = [run.scores[panel][n] for n in xs]
            ax.plot(xs, ys, marker="o", linewidth=2 if panel == "average" else 1.2, label=label)
        _length_axis(ax, all_lengths)
        ax.set_title(panel, fontsize=10, fontweight="bold" if panel == "average" else "normal")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
