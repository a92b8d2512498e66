"""What each recipe field accepts, declared next to it in schema.py.

Every int, float and str field declares its check with its default:

    num_layers: int = number(32, ge=1, le=4096)              # an int in [1, 4096]
    lr: float = number(1.0e-5, gt=0)                         # a finite float > 0
    cp_comm_type: str = one_of("a2a", CP_COMM_TYPES)
    save: Optional[str] = text(None)                         # not empty, not the string "None"

``field_problems`` checks a whole Recipe against these declarations (floats must be finite,
ints need an upper bound, so nothing overflows int64 or runs for ever), which is what
validate.py does first. A field added to schema.py needs only its declaration here;
tests/core/test_config.py fails for an int, float or str field that has none. Checks that
involve several fields (min_lr <= lr, heads divisible by TP, ...) live in validate.py.

OmegaConf checks types; it has no notion of ranges or choices, hence this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

CHECK = "check"  # the dataclass field metadata key


@dataclass(frozen=True)
class Range:
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    why: str = ""

    def describe(self) -> str:
        lo = ("[", ">=", self.ge) if self.ge is not None else ("(", ">", self.gt) if self.gt is not None else None
        hi = ("]", "<=", self.le) if self.le is not None else (")", "<", self.lt) if self.lt is not None else None
        if lo and hi:
            return f"in {lo[0]}{lo[2]}, {hi[2]}{hi[0]}"
        return f"{lo[1]} {lo[2]}" if lo else f"{hi[1]} {hi[2]}"

    def problem(self, value: Any) -> Optional[str]:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if ok else f"must be {self.describe()}, got {value}{self.why}"


@dataclass(frozen=True)
class Choice:
    choices: tuple
    why: str = ""

    def problem(self, value: Any) -> Optional[str]:
        if value in self.choices:
            return None
        names = ", ".join("null" if c is None else str(c) for c in self.choices)
        return f"'{value}' is not one of {names}{self.why}"


@dataclass(frozen=True)
class Text:
    """Free text (a name or a path)."""

    def problem(self, value: Any) -> Optional[str]:
        if not value.strip():
            return "must not be empty (write null to unset it)"
        # YAML reads None (Python's spelling) as the string "None": it would become ./None/...
        if value.strip() in ("None", "none", "Null", "NULL"):
            return f"'{value}' is a string here; write null (unquoted) to unset it"
        return None


def number(default: Any, *, ge=None, gt=None, le=None, lt=None, why: str = "") -> Any:
    return dataclasses.field(default=default, metadata={CHECK: Range(ge, gt, le, lt, f" ({why})" if why else "")})


def one_of(default: Any, choices: Sequence, why: str = "") -> Any:
    return dataclasses.field(default=default, metadata={CHECK: Choice(tuple(choices), f" ({why})" if why else "")})


def text(default: Optional[str] = None) -> Any:
    return dataclasses.field(default=default, metadata={CHECK: Text()})


def texts() -> Any:
    """A list of free-text entries (dataset paths), empty by default."""
    return dataclasses.field(default_factory=list, metadata={CHECK: Text()})


def field_problems(obj: Any, prefix: str = "") -> List[str]:
    """Every field of the dataclass ``obj`` (recursively) that breaks its declared check."""
    problems: List[str] = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            problems += field_problems(value, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                problems += field_problems(item, f"{key}[{i}].")
        elif value is not None and CHECK in f.metadata:
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
            problems += [f"{k}: {p}" for k, v in items if (p := f.metadata[CHECK].problem(v))]
    return problems
