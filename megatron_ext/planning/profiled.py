"""Profiled iterations as calibration input: the planner's time split checked per category.

Whole-iteration rows cannot separate GEMM from attention efficiency when the runs differ only
in recompute or precision (each row is one equation in both); a profile measures the split.
``benchmarks/profile_iteration.py`` writes ``profile_row.json``: the run (recipe, overrides,
GPUs, the profiled iteration) and rank 0's time by category (``megatron_ext/profiling.py``).
Each category group below is one more equation for ``fit._solve``: the planner terms on the
right against the measured milliseconds on the left. Elementwise kernels (norms, RoPE,
SwiGLU, casts) scale with tokens as the GEMMs do, so they count with them; communication
counts only where no compute hides it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from megatron_ext.planning.terms import Calibration, Term
from megatron_ext.planning.throughput import OUTPUT_GEMMS, RECOMPUTE_ATTENTION, RECOMPUTE_GEMMS, time_terms
from megatron_ext.planning.workload import run_work
# (group, measured categories, exposed time only, planner terms: a name ending in a space is a prefix)
GROUPS: Tuple[Tuple[str, Tuple[str, ...], bool, Tuple[str, ...]], ...] = (
    ("GEMMs and elementwise", ("GEMMs", "other kernels"), False, ("GEMMs", OUTPUT_GEMMS)),
    ("attention forward", ("attention forward",), False, ("attention",)),
    ("attention backward", ("attention backward",), False, ("attention backward",)),
    ("recompute", ("recompute (forward again)",), False, (RECOMPUTE_GEMMS, RECOMPUTE_ATTENTION)),
    ("TP communication (exposed)", ("TP communication",), True, ("TP communication",)),
    ("CP communication (exposed)", ("CP communication",), True, ("CP ",)),
)


@dataclass
class ProfileRow:
    label: str
    terms: List[Term]                 # the planner's time terms of the profiled iteration
    measured_ms: Dict[str, float]     # by_category_ms of rank 0
    exposed_ms: Dict[str, float]

    def equations(self) -> List[Tuple[str, List[Term], float]]:
        """(group, planner terms, measured seconds) for every group the run has."""
        out = []
        for group, categories, exposed, names in GROUPS:
            source = self.exposed_ms if exposed else self.measured_ms
            measured = sum(source.get(c, 0.0) for c in categories) / 1e3
            terms = [t for t in self.terms if any(t.name.startswith(n) if n.endswith(" ") else t.name == n
                                                  for n in names)]
            if measured > 0 and any(t.amount for t in terms):
                out.append((group, terms, measured))
        return out


def load_profile(path: Path) -> ProfileRow:
    try:
        data = json.loads(Path(path).read_text())
        iteration = data["profiled_iteration"]  # 0-based: the global batch the profiled step trained on
        recipe, (work,) = run_work(data, range(iteration, iteration + 1))
        return ProfileRow(data.get("label", Path(path).parent.name), time_terms(recipe, data["gpus"], work,
                          data.get("peak_tflops", 989.0)), data["by_category_ms"], data.get("exposed_ms", {}))
    except (ValueError, KeyError, TypeError) as e:  # a RecipeError is a ValueError
        raise ValueError(f"{path}: not a profile_row.json of benchmarks/profile_iteration.py "
                         f"({type(e).__name__}: {e})") from e


def compare_profiles(profiles: List[ProfileRow], calibration: Calibration) -> str:
    lines = ["| profiled run | category | predicted s | measured s | error |", "|---|---|---|---|---|"]
    for p in profiles:
        for group, terms, measured in p.equations():
            predicted = calibration.total(terms)
            lines.append(f"| {p.label} | {group} | {predicted:.2f} | {measured:.2f} | {100 * (predicted / measured - 1):+.1f}% |")
    return "\n".join(lines)
