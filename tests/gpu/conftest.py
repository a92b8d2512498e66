"""Fixtures shared by the GPU checks: where results go, and the environment of training runs."""

import os
from pathlib import Path

import pytest

from train_runner import REPO


@pytest.fixture(scope="module")
def results():
    path = Path(os.environ.get("GPU_RESULTS_DIR", "gpu-results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e["PYTHONUNBUFFERED"] = "1"
    return e
