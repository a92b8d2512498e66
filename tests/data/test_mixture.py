"""The mixture: packing rules, exact shares, supply checks, determinism, resume, data parallelism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_helpers import max_window_error

from megatron_ext.config import RecipeError, load_recipe
from megatron_ext.config.schema import DataConfig, DomainConfig
from megatron_ext.training.loader import build_dataset, micro_batches
from megatron_ext.data.mixture import MixtureDataset, blending_index
from megatron_ext.data.sampler import DataParallelSampler

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHARE_RECIPES = ["prolong/stage1_64k.yaml", "prolong/stage2_512k.yaml", "prolong/sft_64k.yaml",
                 "llama2_long/7b_32k.yaml", "tiny/prolong_stage1_corpus.yaml", "tiny/prolong_stage2_corpus.yaml"]


def mixture(domains, seq_length, num_samples, seed=1, vocab_size=128256):
    return MixtureDataset([DomainConfig(**d) for d in domains], seq_length, num_samples, seed, vocab_size)


@pytest.mark.parametrize("path", SHARE_RECIPES)
def test_every_stage_delivers_its_shares_in_every_window(path):
    recipe = load_recipe(RECIPES / path)
    t, shares = recipe.train, [d.share for d in recipe.data.domains]
    n = max(t.train_iters * t.global_batch_size, 10_000)
    domain_index, domain_sample_index = blending_index(shares, n)
    assert max_window_error(domain_index, shares) <= 0.01
    assert np.abs(np.bincount(domain_index, minlength=len(shares)) - np.asarray(shares) * n).max() <= 1
    for k in range(len(shares)):  # each domain's samples are taken in order 0, 1, 2, ...
        assert np.array_equal(domain_sample_index[domain_index == k], np.arange((domain_index == k).sum()))


def test_long_packing_is_one_chunk_of_one_document(make_dataset):
    prefix = make_dataset("long", [9000, 4096, 8200])  # 2 + 1 + 2 chunks of 4096
    ds = mixture([{"name": "books", "share": 1.0, "packing": "long", "paths": [prefix], "max_epochs": 2}], 4096, 10)
    chunks = set()
    for i in range(10):
        s = ds[i]
        assert s.doc_lengths.tolist() == [4096] and s.loss_mask is None and s.domain == 0
        doc, start = divmod(int(s.tokens[0]), 20_000)
        assert np.array_equal(s.tokens, np.arange(4096) + 20_000 * doc + start)
        chunks.add((doc, start, i // 5))
    assert sorted((d, st) for d, st, _ in chunks) == sorted(2 * [(0, 0), (0, 4096), (1, 0), (2, 0), (2, 4096)])
    assert len(chunks) == 10  # each epoch uses every chunk once
    assert "unused: 816 tokens" in ds.summary()  # 9000 - 8192 + 8200 - 8192


def test_short_packing_cuts_documents_and_continues_them(make_dataset):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=150)
    prefix = make_dataset("short", lengths, stride=300)
    ds = mixture([{"name": "web", "share": 1.0, "packing": "short", "paths": [prefix], "max_epochs": 4}], 512, 150)
    stream = np.concatenate([ds[i].tokens for i in range(150)])
    boundaries = np.concatenate([np.cumsum(ds[i].doc_lengths) + 512 * i for i in range(150)])
    # The samples, end to end, are whole documents in a shuffled order, epoch after epoch; a cut
    # document ends one sample and starts the next.
    docs, at = [], 0
    while at < len(stream):
        doc = int(stream[at]) // 300
        docs.append(doc)
        take = min(int(lengths[doc]), len(stream) - at)
        assert np.array_equal(stream[at:at + take], np.arange(take) + 300 * doc)
        at += take
        assert at in boundaries or at == len(stream)
    epochs = [docs[k:k + 150] for k in range(0, len(docs), 150)]
    assert sorted(epochs[0]) == list(range(150)) and epochs[0] != epochs[1] and sorted(epochs[1]) == list(range(150))
    cut = [i for i in range(149) if ds[i + 1].tokens[0] % 300 != 0]
    assert cut, "some document must continue into the next sample"


def test_sft_packing_keeps_conversations_whole_and_pads_without_loss(make_dataset):
    lengths = [300, 700, 1024, 1500, 200, 512, 90]  # 1500 does not fit a 1024-token sample
    masks = [(np.arange(n) % 3 == 0).astype(np.uint8) for n in lengths]
    prefix = make_dataset("chat", lengths, masks=masks, stride=2000,
                          tokenizer={"name": "t", "vocab_size": 128256, "fingerprint": "t", "eos_id": 7})
    ds = mixture([{"name": "chat", "share": 1.0, "packing": "sft", "paths": [prefix], "max_epochs": 5}], 1024, 12)
    seen = []
    for i in range(12):
        s = ds[i]
        assert s.doc_lengths.sum() == 1024 and s.loss_mask is not None
        at = 0
        for length in s.doc_lengths:
            piece, mask = s.tokens[at:at + length], s.loss_mask[at:at + length]
            if piece[0] == 7 and (piece == 7).all() and length not in lengths:
                assert not mask.any()  # padding: no loss
            else:
                doc = int(piece[0]) // 2000
                assert length == lengths[doc] and np.array_equal(piece, np.arange(length) + 2000 * doc)
                assert np.array_equal(mask, masks[doc])
                seen.append(doc)
            at += length
    assert 3 not in seen and set(seen) == {0, 1, 2, 4, 5, 6}
    assert "dropped: 1 of 7" in ds.summary() and "padding" in ds.summary()


def test_mixed_domains_carry_their_ids_and_masks(make_dataset):
    long = make_dataset("long", [8192] * 4)
    chat = make_dataset("chat", [100] * 300, masks=[np.ones(100)] * 300, stride=200)
    ds = mixture([{"name": "books", "share": 0.5, "packing": "long", "paths": [long], "max_epochs": 10},
                  {"name": "chat", "share": 0.5, "packing": "sft", "paths": [chat], "max_epochs": 10}], 4096, 40)
    assert ds.domain_names == ["books", "chat"]
    for i in range(40):
        s = ds[i]
        assert s.domain == ds.domain_index[i]
        assert (s.loss_mask is None) == (s.domain == 0)


def test_too_small_domain_is_refused_with_the_numbers_or_upsampled_deliberately(make_dataset):
    small = make_dataset("small", [1000] * 10)  # 10,000 tokens = 9.8 samples of 1024
    big = make_dataset("big", [1000] * 200, stride=1000)
    domains = [{"name": "big", "share": 0.8, "packing": "short", "paths": [big]},
               {"name": "small", "share": 0.2, "packing": "short", "paths": [small]}]
    with pytest.raises(RecipeError) as e:
        mixture(domains, 1024, 200)
    (problem,) = e.value.problems
    assert problem.startswith("data.domains[1].max_epochs: domain 'small' must supply 40 samples")
    assert "9.8 samples" in problem and "4.10 epochs > max_epochs 1" in problem and "max_epochs >= 4.10" in problem
    domains[1]["max_epochs"] = 4.1
    ds = mixture(domains, 1024, 200)
    assert "4.10" in ds.summary().splitlines()[3] and len(ds) == 200


def test_long_domain_with_short_documents_is_refused(make_dataset):
    prefix = make_dataset("mixed", [5000, 100, 9000])
    with pytest.raises(RecipeError, match=r"data.domains\[0\].paths: long domain 'code'.*1 of its 3 documents "
                                          r"\(100 tokens\) are shorter than train.seq_length 4,096"):
        mixture([{"name": "code", "share": 1.0, "packing": "long", "paths": [prefix]}], 4096, 2)


def test_vocabulary_and_tokenizer_mismatches_and_missing_data_name_the_key(make_dataset, tmp_path):
    a = make_dataset("a", [5000] * 4, tokenizer={"name": "llama3", "vocab_size": 128256, "fingerprint": "x"})
    b = make_dataset("b", [5000] * 4, tokenizer={"name": "other", "vocab_size": 32000, "fingerprint": "y"},
                     vocab_size=32000)
    domains = [{"name": "a", "share": 0.5, "packing": "long", "paths": [a]},
               {"name": "b", "share": 0.5, "packing": "long", "paths": [b, str(tmp_path / "nope")]}]
    with pytest.raises(RecipeError) as e:
        mixture(domains, 4096, 4, vocab_size=32000)
    problems = "\n".join(e.value.problems)
    assert f"data.domains[1].paths[1]: domain 'b': no dataset at {tmp_path / 'nope'}" in problems
    assert "data.domains[0].paths[0]: " + a + " was tokenized with llama3 (vocabulary 128,256), which does not fit " \
           "model.vocab_size 32,000" in problems
    assert "data.domains: datasets were tokenized with different tokenizers" in problems


def test_deterministic_for_a_seed_and_different_across_seeds(make_dataset):
    prefix = make_dataset("web", np.random.default_rng(1).integers(50, 400, size=200), stride=400)
    spec = [{"name": "web", "share": 1.0, "packing": "short", "paths": [prefix], "max_epochs": 2}]
    first, again, other = mixture(spec, 256, 100, seed=3), mixture(spec, 256, 100, seed=3), mixture(spec, 256, 100, seed=4)
    assert all(np.array_equal(first[i].tokens, again[i].tokens) for i in range(100))
    assert not all(np.array_equal(first[i].tokens, other[i].tokens) for i in range(100))


def _rank_indices(total, consumed, dp_rank, dp_size, steps, mbs=2, gbs=16):
    it = iter(DataParallelSampler(total, consumed, mbs, gbs, dp_rank, dp_size))
    return [next(it) for _ in range(steps * gbs // (mbs * dp_size))]


def test_resume_and_data_parallel_sharding_through_the_sampler(make_dataset):
    prefix = make_dataset("web", [300] * 400, stride=300)
    ds = mixture([{"name": "web", "share": 1.0, "packing": "short", "paths": [prefix]}], 128, 320)
    sample_key = lambda i: ds[i].tokens.tobytes()  # noqa: E731
    # DP: 4 ranks read disjoint micro-batches that together are exactly each global batch.
    ranks = [_rank_indices(len(ds), 0, r, 4, steps=5) for r in range(4)]
    flat = [i for r in ranks for mb in r for i in mb]
    assert sorted(flat) == list(range(80)) and len(set(flat)) == 80
    assert len({sample_key(i) for i in flat}) == 80  # and so are the samples themselves
    # Resume: a fresh dataset + sampler at consumed=48 continue exactly where the full run was.
    full = [sample_key(i) for mb in _rank_indices(len(ds), 0, 1, 4, steps=6) for i in mb]
    rebuilt = mixture([{"name": "web", "share": 1.0, "packing": "short", "paths": [prefix]}], 128, 320)
    resumed = [rebuilt[i].tokens.tobytes() for mb in _rank_indices(len(ds), 48, 1, 4, steps=3) for i in mb]
    assert resumed == full[len(full) // 2:]


def test_loader_builds_the_mixture_from_the_recipe_and_batches_it(make_dataset, capsys):
    long, web = make_dataset("long", [9000] * 8), make_dataset("web", [700] * 200, stride=700)
    recipe = load_recipe(RECIPES / "tiny/prolong_stage1.yaml", ["train.train_iters=10", "data.num_workers=0"])
    recipe.data = DataConfig(domains=[DomainConfig("books", [long], 0.6, "long", max_epochs=5),
                                      DomainConfig("web", [web], 0.4, "short", max_epochs=5)], num_workers=0)
    ds = build_dataset(recipe)
    assert len(ds) == 10 * recipe.train.global_batch_size
    assert "books" in capsys.readouterr().out  # the plan is printed
    batch = next(micro_batches(recipe, ds, consumed_samples=0, dp_rank=0, dp_size=1))
    assert batch.tokens.numel() >= recipe.train.seq_length


def test_checksums_are_verified_once_per_node_and_the_plan_printed_once(make_dataset, capsys):
    long, web = make_dataset("long", [9000] * 8), make_dataset("web", [700] * 200, stride=700)
    recipe = load_recipe(RECIPES / "tiny/prolong_stage1.yaml", ["train.train_iters=10", "data.num_workers=0"])
    recipe.data = DataConfig(domains=[DomainConfig("books", [long], 0.6, "long", max_epochs=5),
                                      DomainConfig("web", [web], 0.4, "short", max_epochs=5)],
                             num_workers=0, verify_checksums=True)
    with open(web + ".bin", "r+b") as f:  # same size, other bytes: only a checksum can tell
        f.write(b"\xff" * 8)
    build_dataset(recipe, rank=9, local_rank=1)  # another rank of the node hashes the files
    assert capsys.readouterr().out == ""  # and rank 0 prints the plan
    with pytest.raises(RecipeError, match=f"{web}.bin: sha256 differs"):
        build_dataset(recipe, rank=8, local_rank=0)
