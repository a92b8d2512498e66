"""Datasets on disk: Megatron's format without Megatron, files that disagree refused at start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_ext.config import RecipeError
from megatron_ext.config.schema import DomainConfig
from megatron_ext.data.indexed import DatasetWriter, PreparedDataset
from megatron_ext.data.mixture import MixtureDataset

LENGTHS = [300, 1, 4096, 77]


def _documents(vocab_size):
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab_size, size=n) for n in LENGTHS]


@pytest.mark.parametrize("vocab_size", [32000, 128256])  # uint16 and int32 tokens
def test_files_are_byte_identical_to_megatrons_builder_and_read_back_by_it(tmp_path, vocab_size):
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

    docs = _documents(vocab_size)
    ours = DatasetWriter(str(tmp_path / "ours"), vocab_size, with_loss_mask=False)
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=DType.optimal_dtype(vocab_size))
    for doc in docs:
        ours.add(doc)
        theirs.add_document(doc, [len(doc)])
    ours.finish({})
    ours.commit()
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes()
    read = IndexedDataset(str(tmp_path / "ours"))
    assert all(np.array_equal(read[i], doc) for i, doc in enumerate(docs))


def test_preparation_does_not_import_megatron_or_torch(tmp_path, python_env):
    # Importing Megatron-Core costs each preparation run ~4 CPU-seconds and ~450 MB before any work.
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    code = ("import sys\n"
            "from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare\n"
            "from megatron_ext.data.sources import SourceConfig\n"
            f"prepare(PrepareConfig(SourceConfig([{str(tmp_path / 'in.jsonl')!r}]), 'llama3', "
            f"[OutputSpec({str(tmp_path / 'out')!r})], progress=False))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'megatron', 'torch'}))\n")
    if subprocess.run([sys.executable, "-c", "import llama_models"], env=python_env).returncode:
        pytest.skip("needs llama-models (the data extra)")
    out = subprocess.run([sys.executable, "-c", code], env=python_env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _open_in_mixture(prefix, verify_checksums=False):
    domain = DomainConfig("web", [prefix], 1.0, "short", max_epochs=1e6)
    return MixtureDataset([domain], 64, 4, 1, 128256, verify_checksums)


def _problem(prefix, verify_checksums=False) -> str:
    with pytest.raises(RecipeError) as e:
        _open_in_mixture(prefix, verify_checksums)
    (problem,) = e.value.problems
    assert problem.startswith("data.domains[0].paths[0]: domain 'web': ")
    return problem


def _truncate(path, nbytes):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - nbytes)


def _append(path, data):
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _truncate(p.with_suffix(".bin"), 100),
     "{p}.bin has 8,848 bytes but {p}.idx describes 8,948 (2,237 tokens of int32): the .bin is truncated"),
    (lambda p: _append(p.with_suffix(".bin"), b"\0" * 8),
     "{p}.bin has 8,956 bytes but {p}.idx describes 8,948 (2,237 tokens of int32): the .bin is longer"),
    (lambda p: p.with_suffix(".bin").write_bytes(b""), "{p}.bin is empty"),
    (lambda p: _truncate(p.with_suffix(".idx"), 20), "{p}.idx: not a readable Megatron index"),
    (lambda p: p.with_suffix(".meta.json").write_text(""), "{p}.meta.json: not valid JSON"),
    (lambda p: p.with_suffix(".meta.json").write_text(json.dumps({"documents": 9, "tokens": 2237})),
     "{p}.meta.json records 9 documents of 2,237 tokens, but {p}.bin/.idx hold 4 of 2,237"),
])
def test_files_that_disagree_are_refused_at_startup_naming_the_file(make_dataset, damage, message):
    prefix = make_dataset("web", [1000, 37, 900, 300])
    _open_in_mixture(prefix)  # intact: opens
    damage(Path(prefix))
    assert message.format(p=prefix) in _problem(prefix)


def test_checksums_catch_same_size_corruption_when_asked(make_dataset):
    prefix = make_dataset("web", [1000, 37, 900, 300])
    assert "sha256" in _open_in_mixture(prefix, verify_checksums=True).summary()
    with open(prefix + ".bin", "r+b") as f:  # same size, other bytes: only a checksum can tell
        f.seek(1000)
        f.write(b"\xff" * 8)
    _open_in_mixture(prefix)
    assert f"{prefix}.bin: sha256 differs from the one recorded in {prefix}.meta.json" in _problem(prefix, True)


def test_a_stale_loss_mask_is_removed_on_rewrite_and_named_when_left_behind(make_dataset, tmp_path):
    sft = make_dataset("d", [50, 60], masks=[np.ones(50), np.zeros(60)])
    assert PreparedDataset(sft).loss_mask is not None
    shutil.copy(sft + ".loss_mask.bin", tmp_path / "old.loss_mask.bin")
    shutil.copy(sft + ".loss_mask.idx", tmp_path / "old.loss_mask.idx")
    text = make_dataset("d", [70])  # a later preparation at the same prefix, without a mask
    assert PreparedDataset(text).loss_mask is None and not list(tmp_path.glob("d.loss_mask.*"))
    for ext in (".bin", ".idx"):  # an older copy of the files comes back (rsync, a restore)
        shutil.copy(tmp_path / f"old.loss_mask{ext}", text + f".loss_mask{ext}")
    problem = _problem(text)
    assert f"{text}.loss_mask.bin and {text}.loss_mask.idx exist: left over from an earlier preparation" in problem
    (tmp_path / "d.meta.json").unlink()  # a foreign dataset: the lengths tell
    assert (f"{text}.loss_mask.bin/.idx: 2 documents of 110 tokens, but {text}.bin/.idx has 1 of 70: left over"
            in _problem(text))
