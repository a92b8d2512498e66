"""Fixtures: a tiny HF Llama checkpoint (random weights, BPE tokenizer trained on stdlib text)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eval_helpers import build_tiny_llama

# Before anything imports huggingface_hub / datasets / nltk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # Tiny models on a shared 2-core machine run ~10x faster without intra-op threads fighting.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)
