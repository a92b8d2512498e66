"""``parallel.tp_comm_overlap_cfg``: Transformer Engine's userbuffer settings per GEMM, read from
a YAML file as Megatron-LM's ``--tp-comm-overlap-cfg`` is, and handed to TE's ``initialize_ub``
as ``ub_cfgs``.

Checked here, before launch, against what TE 2.x and our layers can run
(``transformer_engine/pytorch/module/base.py``, ``initialize_ub``): TE silently ignores a GEMM
name it does not know (a typo leaves that GEMM at its default), an unknown field is a TypeError
on every rank once the model is built, and a method the GEMM's layer cannot use fails only
inside the first step. Which method each GEMM may use follows from how the layers call it with
Megatron-Core's defaults (bulk dgrad overlap, no reduce-scatter dgrad overlap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import yaml

KEY = "parallel.tp_comm_overlap_cfg"
# GEMM -> the overlap methods its layer can run.
METHODS_BY_GEMM = {
    **dict.fromkeys(("qkv_fprop", "fc1_fprop", "proj_dgrad", "fc2_dgrad"), ("ring_exchange",)),  # all-gathers
    **dict.fromkeys(("proj_fprop", "fc2_fprop"), ("pipeline", "ring_exchange")),               # reduce-scatters
    **dict.fromkeys(("qkv_dgrad", "qkv_wgrad", "fc1_dgrad", "fc1_wgrad"), ("bulk",)),
    **dict.fromkeys(("proj_wgrad", "fc2_wgrad"), ("external",)),  # overlapped by their dgrad's ring
}
GEMMS = tuple(METHODS_BY_GEMM)
AT_LEAST_ONE = ("num_sm", "cga_size", "num_splits")
PRIORITIES = ("comm_priority", "gemm_priority")  # CUDA stream priorities: 0 or negative
BOOL_FIELDS = ("set_sm_margin", "aggregate", "atomic_gemm", "use_ce", "fp8_buf", "pipeline_rs_overlap_first_gemm")


def _is_bool(value) -> bool:  # NVIDIA's own files write 0 / 1
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _setting_problem(gemm: str, name: str, value, fp8: bool) -> Optional[str]:
    if name == "method":
        allowed = METHODS_BY_GEMM[gemm]
        return None if value in allowed else f"method '{value}' cannot run here (this GEMM: {', '.join(allowed)})"
    if name == "is_reduce_scatter":
        return "is_reduce_scatter is fixed by the GEMM (its layer expects that direction); leave it out"
    if name in BOOL_FIELDS:
        if not _is_bool(value):
            return f"{name} must be true/false (or 0/1), got {value!r}"
        if name == "atomic_gemm" and value and not fp8:
            return "atomic_gemm needs FP8 GEMMs (precision.fp8)"
        return None
    if name in AT_LEAST_ONE:
        return None if _is_int(value) and value >= 1 else f"{name} must be a whole number >= 1, got {value!r}"
    if name in PRIORITIES:
        return None if _is_int(value) else f"{name} must be a whole number, got {value!r}"
    known = ", ".join(("method", *AT_LEAST_ONE, *PRIORITIES, *BOOL_FIELDS))
    return f"unknown setting '{name}' (known: {known})"


def read_userbuffer_settings(path: str | Path, fp8: bool = False) -> Dict[str, dict]:
    """The file's settings, ``{gemm: {setting: value}}``, for a run with (``fp8``) or without FP8
    GEMMs; ValueError naming the key, the file and every problem in it."""
    where = f"{KEY}: {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a mapping of GEMM names ({', '.join(GEMMS)}) to settings")
    problems: List[str] = []
    for gemm, settings in data.items():
        if gemm not in GEMMS:
            problems.append(f"'{gemm}' is not a GEMM Transformer Engine overlaps ({', '.join(GEMMS)})")
        elif not isinstance(settings, dict):
            problems.append(f"{gemm}: expected a mapping of settings, got {settings!r}")
        else:
            problems += [f"{gemm}: {p}" for name, value in settings.items()
                         if (p := _setting_problem(gemm, name, value, fp8))]
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return data
