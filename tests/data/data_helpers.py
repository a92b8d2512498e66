"""Helpers shared by the data tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    """Import tools/<name>.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_window_error(domain_index: np.ndarray, shares, window: int = 1000) -> float:
    """Largest |measured - wanted| share of any domain over every window of ``window`` samples."""
    worst = 0.0
    for k, share in enumerate(shares):
        counts = np.concatenate([[0], np.cumsum(domain_index == k)])
        worst = max(worst, float(np.abs((counts[window:] - counts[:-window]) / window - share).max()))
    return worst
