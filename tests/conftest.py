"""Shared test setup: GPU tests skip cleanly on machines without a GPU + Transformer Engine."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _has_gpu_stack() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def pytest_collection_modifyitems(config, items):
    if _has_gpu_stack():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with Transformer Engine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def python_env():
    """Environment for subprocesses that import this repository (session-wide: never mutated)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture
def python():
    return sys.executable
