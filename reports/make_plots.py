"""PNG plots for reports/gpu_training.md from a GPU run's loss curves (loss_curves.csv).

    python reports/make_plots.py reports/data/gpu_2026-11-23
"""

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# file: (title, runs, iteration to mark or None)
PANELS = {
    "fp8_tracking.png": ("FP8 GEMMs vs bf16 (tiny stage 1, 400 steps)",
                         ["fp8/bf16", "fp8/bf16_seed4321", "fp8/delayed", "fp8/tensorwise"], None),
    "fp8_attention.png": ("FP8 attention on single-document samples vs bf16",
                          ["fp8_attention/bf16", "fp8_attention/fp8"], None),
    "exact_resume.png": ("Killed at iteration 82 (SIGUSR1) and resumed vs uninterrupted",
                         ["pipeline/stage1", "resume/killed_and_resumed"], 82),
}


def read_curves(path: Path) -> dict:
    curves = defaultdict(lambda: ([], []))
    with path.open() as f:
        for row in csv.DictReader(f):
            its, losses = curves[row["run"]]
            its.append(int(row["iteration"]))
            losses.append(float(row["loss"]))
    return curves


def main(data_dir: Path, out_dir: Path) -> None:
    curves = read_curves(data_dir / "loss_curves.csv")
    for filename, (title, runs, mark) in PANELS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, run in enumerate(runs):
            its, losses = curves[run]
            ax.plot(its, losses, label=run.split("/")[1], linewidth=1.2, linestyle="--" if i else "-")
        if mark is not None:
            ax.axvline(mark, color="grey", linewidth=0.8, linestyle=":", label=f"checkpoint + exit at {mark}")
        ax.set(title=title, xlabel="iteration", ylabel="loss (token-averaged)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / filename, dpi=110)
        plt.close(fig)
        print(out_dir / filename)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    main(args.data_dir, args.out)
