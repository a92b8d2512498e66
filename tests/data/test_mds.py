"""Import of mosaic-streaming MDS shards (ProLong's release format), written here by mosaicml-streaming."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
from data_helpers import load_tool

from megatron_ext.data.indexed import PreparedDataset
from megatron_ext.data.mds import MDSError, import_mds

pytestmark = pytest.mark.skipif(importlib.util.find_spec("streaming") is None,
                                reason="needs mosaicml-streaming to write MDS shards (pip install --no-deps mosaicml-streaming)")

COLUMNS = {"input_ids": "ndarray:uint32", "indices": "ndarray:uint32", "domain": "str", "length": "int"}


@pytest.fixture(scope="module")
def MDSWriter():
    # streaming/__init__ imports its torchvision datasets; no torchvision matches the CPU torch
    # here, and writing MDS never touches them.
    if "streaming" not in sys.modules:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    from streaming import MDSWriter

    return MDSWriter


def _packed(rng, lengths, vocab=128256):
    spans = np.cumsum([0] + lengths)
    return rng.integers(0, vocab, size=spans[-1]).astype(np.uint32), np.stack([spans[:-1], spans[1:]], 1).astype(np.uint32)


def test_boundaries_domains_and_compression_survive(tmp_path, MDSWriter):
    rng = np.random.default_rng(0)
    samples = []
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS, compression="zstd", size_limit=1 << 14) as w:
        for i in range(40):
            ids, spans = _packed(rng, [int(x) for x in rng.integers(1, 300, size=1 + i % 4)])
            domain = ["books", "code"][i % 2]
            w.write({"input_ids": ids, "indices": spans, "domain": domain, "length": len(ids)})
            samples.append((ids, spans, domain))
    assert len(list((tmp_path / "mds").glob("*.mds.zstd"))) > 3  # several compressed shards
    report = import_mds(str(tmp_path / "mds"), str(tmp_path / "out"), split_by_domain=True)
    for domain in ("books", "code"):
        ds = PreparedDataset(str(tmp_path / "out" / domain))
        expected = [ids[a:b] for ids, spans, d in samples if d == domain for a, b in spans]
        assert [int(n) for n in ds.doc_lengths] == [len(e) for e in expected]
        assert all(np.array_equal(ds.read(k, 0, len(e))[0], e) for k, e in enumerate(expected))
        assert ds.meta["imported_from"] == "mds" and ds.loss_mask is None
    assert report.samples == 40 and report.skips.total() == 0


def test_sft_masks_are_kept_per_document(tmp_path, MDSWriter):
    rng = np.random.default_rng(1)
    with MDSWriter(out=str(tmp_path / "mds"), columns={**COLUMNS, "mask": "ndarray:uint8"}) as w:
        ids, spans = _packed(rng, [50, 70, 30])
        mask = (rng.random(len(ids)) < 0.5).astype(np.uint8)
        w.write({"input_ids": ids, "indices": spans, "domain": "sft", "length": len(ids), "mask": mask})
    import_mds(str(tmp_path / "mds"), str(tmp_path / "sft"), tokenizer={"name": "llama3", "vocab_size": 128256})
    ds = PreparedDataset(str(tmp_path / "sft"))
    assert ds.loss_mask is not None and [int(n) for n in ds.doc_lengths] == [50, 70, 30]
    assert np.array_equal(np.concatenate([ds.read(k, 0, int(n))[1] for k, n in enumerate(ds.doc_lengths)]), mask)
    assert ds.meta["tokenizer"]["vocab_size"] == 128256


def test_inconsistent_samples_are_skipped_and_gaps_counted(tmp_path, MDSWriter):
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS) as w:
        ids = np.arange(100, dtype=np.uint32)
        w.write({"input_ids": ids, "indices": np.array([[0, 40], [50, 100]], np.uint32), "domain": "a", "length": 100})
        w.write({"input_ids": ids, "indices": np.array([[0, 60], [50, 100]], np.uint32), "domain": "a", "length": 100})
        w.write({"input_ids": ids, "indices": np.array([[0, 100]], np.uint32), "domain": "a", "length": 99})
        w.write({"input_ids": ids, "indices": np.array([[0, 120]], np.uint32), "domain": "a", "length": 100})
    report = import_mds(str(tmp_path / "mds"), str(tmp_path / "out"))
    assert [int(n) for n in PreparedDataset(str(tmp_path / "out")).doc_lengths] == [40, 50]
    assert report.tokens_outside_documents == 10
    assert sorted(report.skips.counts()) == [
        "inconsistent sample: 'length' 99 != 100 input_ids",
        "inconsistent sample: a document span is empty or outside input_ids",
        "inconsistent sample: document spans overlap or are out of order"]
    assert report.skips.examples("inconsistent sample: document spans overlap or are out of order")[0].endswith(":sample 1")


def test_cli_and_unreadable_input(tmp_path, MDSWriter, capsys):
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS) as w:
        w.write({"input_ids": np.arange(10, dtype=np.uint32), "indices": np.array([[0, 4], [4, 10]], np.uint32),
                 "domain": "a", "length": 10})
    tool = load_tool("import_mds")
    assert tool.main(["--input", str(tmp_path / "mds"), "--output-prefix", str(tmp_path / "out")]) == 0
    assert "2 documents" in capsys.readouterr().out
    assert tool.main(["--input", str(tmp_path / "nothing"), "--output-prefix", str(tmp_path / "x")]) == 2
    assert "MDS input not found" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    with pytest.raises(MDSError, match="no index.json"):
        import_mds(str(tmp_path / "plain"), str(tmp_path / "y"))


def test_each_domain_counts_its_own_skips_and_gaps(tmp_path, MDSWriter):
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS) as w:
        ids = np.arange(100, dtype=np.uint32)
        w.write({"input_ids": ids, "indices": np.array([[0, 40], [50, 100]], np.uint32), "domain": "a", "length": 100})
        w.write({"input_ids": ids, "indices": np.array([[0, 100]], np.uint32), "domain": "a", "length": 99})
        w.write({"input_ids": ids, "indices": np.array([[0, 100]], np.uint32), "domain": "b", "length": 100})
    report = import_mds(str(tmp_path / "mds"), str(tmp_path / "out"), split_by_domain=True)
    a, b = (PreparedDataset(str(tmp_path / "out" / d)).meta for d in "ab")
    assert (a["samples"], a["skipped"], a["tokens_outside_documents"]) == (
        2, {"inconsistent sample: 'length' 99 != 100 input_ids": 1}, 10)
    assert (b["samples"], b["skipped"], b["tokens_outside_documents"]) == (1, {}, 0)
    assert (report.samples, report.skips.total(), report.tokens_outside_documents) == (3, 1, 10)


@pytest.mark.parametrize("compression, damage", [
    (None, lambda data: data[:len(data) - 7]),                        # cut off
    (None, lambda data: data[:300] + b"\xff" * 8 + data[308:]),       # a sample's column sizes overwritten
    ("zstd", lambda data: data[:20] + b"\x00" * (len(data) - 20)),    # compressed data garbled
])
def test_a_corrupt_shard_is_named(tmp_path, MDSWriter, compression, damage):
    rng = np.random.default_rng(2)
    with MDSWriter(out=str(tmp_path / "mds"), columns=COLUMNS, compression=compression) as w:
        for _ in range(5):
            ids, spans = _packed(rng, [60, 40])
            w.write({"input_ids": ids, "indices": spans, "domain": "a", "length": len(ids)})
    (shard,) = [p for p in (tmp_path / "mds").iterdir() if p.name.startswith("shard")]
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(MDSError, match=f"^{shard}: corrupt shard"):
        import_mds(str(tmp_path / "mds"), str(tmp_path / "out"))
    assert not list(tmp_path.glob("out*"))
