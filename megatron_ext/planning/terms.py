"""Model terms and the calibration constants that scale them.

Every estimate is a sum of terms; a term is an exact count (bytes, FLOPs / peak, bytes moved,
parameters) times either 1 or one named calibration constant (an inverse efficiency, seconds
per GB, a bytes-per-token factor). That keeps both models linear in their constants, so
``fit.py`` refits them with a least-squares solve on measured runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

GIB = 2**30
DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")
# A constant matters to an estimate (and a run measures it) once its terms make up this share.
INFORMATIVE_SHARE = 0.02


@dataclass(frozen=True)
class Term:
    name: str
    amount: float                    # the exact count
    constant: Optional[str] = None   # scaled by this calibration constant (None: exact as is)


@dataclass
class Calibration:
    # What a constant is worth before any fit, and where that value comes from.
    priors: Dict[str, dict]
    # Memory outside PyTorch's allocator (CUDA context, NCCL, cuBLAS/cuDNN workspaces) and the
    # allocator's own waste; not in max_memory_allocated, so not fitted on it.
    reserve_gib: float = 3.5
    fragmentation: float = 0.03
    fitted_on: List[str] = field(default_factory=list)
    # The constants measured runs have determined; the others are still their priors.
    fitted: Dict[str, float] = field(default_factory=dict)

    @property
    def constants(self) -> Dict[str, float]:
        """Every constant's value: fitted where runs determined it, its prior otherwise."""
        return {name: p["value"] for name, p in self.priors.items()} | self.fitted

    @classmethod
    def load(cls, path: Path = DEFAULT_CALIBRATION) -> "Calibration":
        data = json.loads(Path(path).read_text())
        return cls(data["priors"], data.get("reserve_gib", 3.5), data.get("fragmentation", 0.03),
                   data.get("fitted_on", []), data.get("constants", {}))

    def save(self, path: Path) -> None:
        # 6 significant digits, not decimals: a refit must reproduce the small constants (s per GB) too
        data = {"description": "Planner constants (megatron_ext/planning/terms.py); refit with "
                               "tools/plan.py --calibrate ROWS.jsonl --write",
                "fitted_on": self.fitted_on, "reserve_gib": self.reserve_gib, "fragmentation": self.fragmentation,
                "constants": {k: float(f"{v:.6g}") for k, v in sorted(self.fitted.items())}, "priors": self.priors}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    def unmeasured(self, terms: Sequence[Term], share: float = INFORMATIVE_SHARE) -> List[str]:
        """Constants no measured run has determined yet whose terms make up at least this share
        of the estimate: what a prediction built on these terms rests on beyond measurements."""
        total = self.total(terms)
        by_constant: Dict[str, float] = {}
        for t in terms:
            if t.constant and t.constant not in self.fitted:
                by_constant[t.constant] = by_constant.get(t.constant, 0.0) + self.value(t)
        return sorted(c for c, v in by_constant.items() if total and v >= share * total)

    def value(self, term: Term) -> float:
        return term.amount * (self.constants[term.constant] if term.constant else 1.0)

    def total(self, terms: Sequence[Term]) -> float:
        return sum(self.value(t) for t in terms)
