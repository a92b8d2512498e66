"""``parallel.tp_comm_overlap_cfg``: Transformer Engine's userbuffer settings per GEMM, read from
a YAML file as Megatron-LM's ``--tp-comm-overlap-cfg`` is, and handed to TE's ``initialize_ub``
as ``ub_cfgs``.

Checked here, before launch, against the GEMM names and fields of TE 2.x
(``transformer_engine/pytorch/module/base.py``): TE silently ignores a GEMM name it does not
know (a typo leaves that GEMM at its default), and an unknown field is a TypeError on every
rank once the model is being built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import yaml

KEY = "parallel.tp_comm_overlap_cfg"
# The GEMMs of a transformer layer that TE overlaps with tensor-parallel communication.
GEMMS = tuple(f"{layer}_{kind}" for layer in ("qkv", "proj", "fc1", "fc2") for kind in ("fprop", "dgrad", "wgrad"))
METHODS = ("ring_exchange", "pipeline", "bulk", "external")
INT_FIELDS = ("num_sm", "cga_size", "num_splits", "comm_priority", "gemm_priority")
BOOL_FIELDS = ("is_reduce_scatter", "set_sm_margin", "aggregate", "atomic_gemm", "use_ce", "fp8_buf",
               "pipeline_rs_overlap_first_gemm")


def _setting_problem(name: str, value) -> str | None:
    if name == "method":
        return None if value in METHODS else f"method '{value}' is not one of {', '.join(METHODS)}"
    if name in BOOL_FIELDS:  # NVIDIA's own files write 0 / 1
        ok = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))
        return None if ok else f"{name} must be true/false (or 0/1), got {value!r}"
    if name in INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else f"{name} must be a whole number >= 0, got {value!r}"
    return f"unknown setting '{name}' (TE knows method, {', '.join(INT_FIELDS + BOOL_FIELDS)})"


def read_userbuffer_settings(path: str | Path) -> Dict[str, dict]:
    """The file's settings, ``{gemm: {setting: value}}``; ValueError naming the key, the file and
    every problem in it."""
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
            problems += [f"{gemm}: {p}" for name, value in settings.items() if (p := _setting_problem(name, value))]
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return data
