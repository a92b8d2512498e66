"""Measured runs -> the planner's constants, and how well the planner reproduces each run.

A row is one line of ``benchmarks/throughput.py --out``: recipe, overrides, GPUs, warm-up
iterations, tokens/s/GPU and peak memory (``max_memory_allocated``). The planner rebuilds the
run's recipe and the very samples of its measured iterations, so a row's attention work is
what the run did, not an average.

Fitting is a least-squares solve of each model (linear in its constants) on relative errors,
with a weak pull of every constant toward its prior: a constant the rows determine follows
them, one they say nothing about keeps its prior (and ``priors`` says where that came from).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from megatron_ext.config.schema import Recipe
from megatron_ext.planning.memory import memory_terms
from megatron_ext.planning.profiled import ProfileRow
from megatron_ext.planning.terms import GIB, INFORMATIVE_SHARE, Calibration, Term
from megatron_ext.planning.throughput import time_terms
from megatron_ext.planning.workload import RankWork, run_work

MEMORY_TOLERANCE, THROUGHPUT_TOLERANCE = 0.10, 0.15
PRIOR_WEIGHT = 1e-3


@dataclass
class Row:
    label: str
    recipe: Recipe
    gpus: int
    works: List[RankWork]          # the measured iterations, slowest DP rank each
    tokens_per_sec_per_gpu: Optional[float]
    peak_memory_gib: Optional[float]
    peak_tflops: float
    fit: bool = True               # False: compared, but not fitted on (see note)
    note: str = ""

    @property
    def iteration_seconds(self) -> float:
        t = self.recipe.train
        return t.global_batch_size * t.seq_length / self.gpus / self.tokens_per_sec_per_gpu

    def memory_terms(self) -> List[Term]:
        return memory_terms(self.recipe, self.gpus)

    def time_terms(self) -> List[Term]:
        """The terms of the run's median iteration (the mean of the middle two for an even
        count), as benchmarks/throughput.py reports the median tokens/s. Iterations are ranked
        by attention pairs: their tokens are equal, so that is their order in time too."""
        ranked = sorted(self.works, key=lambda w: w.pairs)
        middle = ranked[(len(ranked) - 1) // 2:len(ranked) // 2 + 1]
        per_iteration = [time_terms(self.recipe, self.gpus, w, self.peak_tflops) for w in middle]
        return [Term(t.name, statistics.fmean(it[i].amount for it in per_iteration), t.constant)
                for i, t in enumerate(per_iteration[0])]


def load_rows(paths: Iterable[Path]) -> List[Row]:
    rows = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(measured_row(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:  # a RecipeError is a ValueError
                raise ValueError(f"{path}, line {number}: not a row of benchmarks/throughput.py --out "
                                 f"({type(e).__name__}: {e})") from e
    return rows


def measured_row(data: dict) -> Row:
    """A row of benchmarks/throughput.py with the run's recipe and the work of its measured
    iterations rebuilt; measurements absent (or an out-of-memory run): None."""
    recipe, works = run_work(data)
    oom = data.get("oom", False)
    fit, note = data.get("fit", True), data.get("note", "")
    if recipe.parallel.tp_comm_overlap_cfg:  # the model knows TE's default userbuffers only
        fit, note = False, "; ".join(filter(None, [note, "own userbuffer settings: not modelled, not fitted"]))
    return Row(label=data["label"], recipe=recipe, gpus=data["gpus"], works=works,
               tokens_per_sec_per_gpu=None if oom else data.get("tokens_per_sec_per_gpu"),
               peak_memory_gib=None if oom else data.get("peak_memory_gib"), peak_tflops=data.get("peak_tflops", 989.0),
               fit=fit, note=note)


def _solve(equations: List[tuple], calibration: Calibration) -> Dict[str, float]:
    """equations: (terms, measured). Minimize sum of squared relative errors + prior pull."""
    names = sorted({t.constant for terms, _ in equations for t in terms if t.constant and t.amount})
    if not names:
        return {}
    a, b = [], []
    for terms, measured in equations:
        a.append([sum(t.amount for t in terms if t.constant == n) / measured for n in names])
        b.append(1 - sum(t.amount for t in terms if not t.constant) / measured)
    for i, n in enumerate(names):
        prior = calibration.priors[n]["value"]
        a.append([np.sqrt(PRIOR_WEIGHT) / prior if j == i else 0.0 for j in range(len(names))])
        b.append(np.sqrt(PRIOR_WEIGHT))
    x = np.linalg.lstsq(np.array(a), np.array(b), rcond=None)[0]
    informative = {n for i, n in enumerate(names) for row in a[:len(equations)]
                   if row[i] * calibration.priors[n]["value"] >= INFORMATIVE_SHARE}
    # A constant is a physical positive quantity: never let the solve push it below a
    # hundredth of its prior. The runs say (almost) nothing about the others: keep their priors.
    return {n: float(max(v, 0.01 * calibration.priors[n]["value"])) for n, v in zip(names, x) if n in informative}


def fit(rows: List[Row], calibration: Calibration, sources: List[str], profiles: Sequence[ProfileRow] = ()) -> Calibration:
    """A refit from scratch on ``rows`` (and the time split of ``profiles``): the constants they
    determine, every other one back at its prior (as ``_solve`` pulls toward the priors, not
    toward an earlier fit), so the result rests on ``sources`` alone; to keep what earlier runs
    measured, fit on their rows too."""
    memory = [(r.memory_terms(), r.peak_memory_gib * GIB) for r in rows if r.fit and r.peak_memory_gib]
    time = [(r.time_terms(), r.iteration_seconds) for r in rows if r.fit and r.tokens_per_sec_per_gpu]
    time += [(terms, seconds) for p in profiles for _, terms, seconds in p.equations()]
    solved = _solve(memory, calibration) | _solve(time, calibration)
    return Calibration(calibration.priors, calibration.reserve_gib, calibration.fragmentation, sources, solved)


def compare(rows: List[Row], calibration: Calibration) -> List[dict]:
    """Predicted vs measured, per row."""
    out = []
    for r in rows:
        memory = calibration.total(r.memory_terms()) / GIB
        needs = memory * (1 + calibration.fragmentation) + calibration.reserve_gib
        seconds = calibration.total(r.time_terms())
        tokens = r.recipe.train.global_batch_size * r.recipe.train.seq_length / r.gpus / seconds
        out.append({
            "label": r.label, "fit": r.fit, "note": r.note,
            "memory_gib": memory, "needs_gib": needs, "measured_memory_gib": r.peak_memory_gib,
            "memory_error": None if r.peak_memory_gib is None else memory / r.peak_memory_gib - 1,
            "tokens_per_sec_per_gpu": tokens, "measured_tokens_per_sec_per_gpu": r.tokens_per_sec_per_gpu,
            "throughput_error": None if r.tokens_per_sec_per_gpu is None else tokens / r.tokens_per_sec_per_gpu - 1,
        })
    return out


def comparison_table(results: List[dict]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:+.1f}%"

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["| run | memory GiB predicted / measured | error | tokens/s/GPU predicted / measured | error | fitted on |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['memory_gib']:.1f} / {num(r['measured_memory_gib'], '.1f')} | "
                     f"{pct(r['memory_error'])} | {r['tokens_per_sec_per_gpu']:,.0f} / "
                     f"{num(r['measured_tokens_per_sec_per_gpu'], ',.0f')} | {pct(r['throughput_error'])} | "
                     f"{'yes' if r['fit'] else 'no: ' + r['note']} |")
    return "\n".join(lines)
