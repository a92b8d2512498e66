"""Fixtures for the data pipeline: the Llama-3 tokenizer, tiny prepared datasets, the mini corpus.

The mini corpus (tools/build_mini_corpus.py --small, ~2M tokens) is built once and cached in
pytest's cache folder, so later sessions reuse it. Its Debian sources are apt-installed when
missing (root) and the tests skip otherwise; Python packages come from the README's install
(the data extra), never from the tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import REPO, load_tool


def _ensure_sources() -> None:
    corpus = load_tool("build_mini_corpus")
    if not corpus.missing_sources():
        return
    try:
        corpus.install_sources()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"mini-corpus sources {corpus.missing_sources()} missing and not installable here ({e})")
    if corpus.missing_sources():
        pytest.skip(f"mini-corpus sources missing: {', '.join(corpus.missing_sources())}")


@pytest.fixture(scope="session")
def llama3():
    if importlib.util.find_spec("llama_models") is None:
        pytest.skip('needs llama-models, part of the data extra (pip install -e ".[data]")')
    from megatron_ext.data.tokenizer import load_tokenizer

    return load_tokenizer("llama3")


@pytest.fixture(scope="session")
def mini_corpus(request) -> Path:
    out = Path(request.config.cache.mkdir("prolong_mini_corpus")) / "small"
    corpus = load_tool("build_mini_corpus")
    if not corpus.is_built(out, small=True):
        _ensure_sources()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, str(REPO / "tools" / "build_mini_corpus.py"), "--out", str(out), "--small",
                        "--workers", "1"], check=True, env=env, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset(name, doc lengths, masks=None, tokenizer=None) -> prefix. Token p of document
    i is ``i * stride + p`` (mod vocabulary): with short enough documents a token names its place."""
    from megatron_ext.data.indexed import DatasetWriter

    def make(name, lengths, masks=None, tokenizer=None, vocab_size=128256, stride=20_000):
        prefix = str(tmp_path / name)
        writer = DatasetWriter(prefix, vocab_size, with_loss_mask=masks is not None)
        for i, length in enumerate(lengths):
            tokens = (np.arange(int(length)) + stride * i) % vocab_size
            writer.add(tokens.astype(np.int64), None if masks is None else np.asarray(masks[i], dtype=np.uint8))
        writer.finish({"tokenizer": tokenizer or {"name": "test", "vocab_size": vocab_size, "fingerprint": "t"}})
        writer.commit()
        return prefix

    return make
