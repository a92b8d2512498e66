"""A real two-node Slurm (both nodes on this machine) for the slurm/ scripts: installed with apt
if missing (root only), started once per session, and stopped by PID at the end, also when
tests fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import APT_PACKAGES, Cluster, install_packages, missing_packages  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: starts a real two-node Slurm on this machine (root, Debian packages)")


def _apt_install(packages, why: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{why}: needs root and apt-get to install {' '.join(packages)}")
    try:
        install_packages(packages)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"{why}: apt-get install {' '.join(packages)} failed: {e}")


@pytest.fixture(scope="session")
def cluster():
    if missing_packages():
        _apt_install(APT_PACKAGES, "Slurm is not installed")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged needs root")
    c = Cluster()
    try:
        yield c.start()
    finally:
        leftovers = c.stop()
    assert not leftovers, f"job processes outlived their jobs (killed now): {leftovers}"


@pytest.fixture(scope="session")
def shellcheck() -> str:
    if shutil.which("shellcheck") is None:
        _apt_install(["shellcheck"], "shellcheck is not installed")
    return shutil.which("shellcheck")
