"""Each ProLong stage's recipe on the mini corpus: >= 10,000 sampled sequences with the stage's
shares, the stage's packing, and (tiny recipes) batches through the real loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import REPO, max_window_error

from megatron_ext.config import load_recipe
from megatron_ext.data.mixture import build_mixture
from megatron_ext.training.loader import build_dataset, micro_batches

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _stage(path: str, iters: int, mini_corpus, monkeypatch):
    """The stage's recipe on the mini corpus, sized to ``iters`` steps; the mini corpus is far too
    small for a real stage, so every domain may be upsampled."""
    monkeypatch.setenv("PROLONG_DATA", str(mini_corpus))
    recipe = load_recipe(RECIPES / path, [f"train.train_iters={iters}"])
    for domain in recipe.data.domains:
        domain.max_epochs = 1e6
    return recipe, build_mixture(recipe, recipe.data.verify_checksums)


def _check_shares(recipe, ds):
    shares = [d.share for d in recipe.data.domains]
    assert len(ds) == recipe.train.train_iters * recipe.train.global_batch_size >= 10_000
    assert max_window_error(ds.domain_index, shares) <= 0.01
    picks = np.random.default_rng(0).choice(len(ds), size=12, replace=False)
    for i in picks:  # the index-level domain is the domain of the sample actually read
        s = ds[int(i)]
        assert s.domain == ds.domain_index[i] and s.doc_lengths.sum() == recipe.train.seq_length


def _first_sample_of(ds, domain: str, count: int = 3):
    k = ds.domain_names.index(domain)
    return [ds[int(i)] for i in np.flatnonzero(ds.domain_index == k)[:count]]


def test_stage1_64k(mini_corpus, monkeypatch):
    recipe, ds = _stage("prolong/stage1_64k.yaml", 157, mini_corpus, monkeypatch)
    _check_shares(recipe, ds)
    for s in _first_sample_of(ds, "code_repos") + _first_sample_of(ds, "books"):
        assert s.doc_lengths.tolist() == [65536]
    assert any(len(s.doc_lengths) > 1 for s in _first_sample_of(ds, "fineweb"))


def test_stage2_mixes_packed_64k_class_and_single_document_512k_samples(mini_corpus, monkeypatch):
    recipe, ds = _stage("prolong/stage2_512k.yaml", 625, mini_corpus, monkeypatch)
    _check_shares(recipe, ds)
    for domain in ("code_repos_512k", "books_512k"):
        assert all(s.doc_lengths.tolist() == [524288] for s in _first_sample_of(ds, domain))
    for domain in ("code_repos_64k", "books_64k"):
        samples = _first_sample_of(ds, domain, 4)
        assert all(s.doc_lengths.sum() == 524288 for s in samples)
        assert any(len(s.doc_lengths) > 1 for s in samples)  # several 64K-512K documents per sample
        assert all(s.doc_lengths.max() <= 524287 for s in samples)


def test_sft_64k_packs_conversations_with_assistant_masks(mini_corpus, monkeypatch, llama3):
    recipe, ds = _stage("prolong/sft_64k.yaml", 157, mini_corpus, monkeypatch)
    _check_shares(recipe, ds)
    s = ds[0]
    assert s.loss_mask is not None and len(s.doc_lengths) > 10
    at = 0
    for length in s.doc_lengths[:-1]:
        tokens, mask = s.tokens[at:at + length], s.loss_mask[at:at + length]
        assert tokens[0] == llama3.bos_id and mask.any()
        assert llama3.decode(tokens[mask == 1]).count("<|eot_id|>") == llama3.decode(tokens).count(
            "<|start_header_id|>assistant")
        at += length


@pytest.mark.parametrize("path", ["tiny/prolong_stage1_corpus.yaml", "tiny/prolong_stage2_corpus.yaml",
                                  "tiny/prolong_sft_corpus.yaml"])
def test_tiny_corpus_recipes_train_through_the_loader(path, mini_corpus, monkeypatch):
    monkeypatch.setenv("PROLONG_MINI_DATA", str(mini_corpus))
    recipe = load_recipe(RECIPES / path, ["data.num_workers=0"])
    for domain in recipe.data.domains:  # the small corpus is sized for the tests, not for these recipes
        domain.max_epochs = 1e6
    ds = build_dataset(recipe)
    batches = micro_batches(recipe, ds, consumed_samples=0, dp_rank=0, dp_size=1)
    for _ in range(3):
        batch = next(batches)
        assert batch.tokens.numel() >= recipe.train.seq_length


def test_the_documented_cpu_corpus_command_is_small_and_runs_on_the_small_corpus(mini_corpus, monkeypatch):
    """docs/data.md's CPU command for the corpus recipe: a few thousand tokens, not hours, and its
    recipe builds on the --small corpus as the recipe stands (no upsampling beyond its own)."""
    text = (REPO / "docs" / "data.md").read_text()
    command = text[text.index("recipes/tiny/prolong_stage1_corpus.yaml \\\n    train.device=cpu"):].split("\n```")[0]
    overrides = [word for word in command.replace("\\\n", " ").split() if "=" in word]
    monkeypatch.setenv("PROLONG_MINI_DATA", str(mini_corpus))
    recipe = load_recipe(RECIPES / "tiny/prolong_stage1_corpus.yaml", overrides + ["data.num_workers=0"])
    t = recipe.train
    assert t.device == "cpu" and t.train_iters * t.global_batch_size * t.seq_length <= 16_384
    next(micro_batches(recipe, build_dataset(recipe), consumed_samples=0, dp_rank=0, dp_size=1))
