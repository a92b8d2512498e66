"""Mosaic-streaming MDS shards (the released ProLong data) -> our datasets, boundaries and masks kept.

A ProLong MDS sample is a packed sequence: ``input_ids``, ``indices`` (N x 2 document
[start, end) spans), ``domain``, ``length``, and for SFT ``mask`` (1 = the token is a
training target, aligned with input_ids). Each span becomes one document of the output, its
mask slice with it. Tokens outside every span are dropped, as ProLong's own loader ignores
them, and counted.

Why a reader of our own instead of ``streaming.LocalDataset``: mosaicml-streaming imports
torchvision and cloud SDKs at import time and pins numpy<2.2 and transformers<5, which this
stack cannot take. Its on-disk format (version 2) is small: ``index.json`` lists the shards
and their column encodings; a shard holds ``[n: u32][n + 1 offsets: u32][samples]`` and a
sample holds one u32 size per variable-size column, then each column's bytes.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from megatron_ext.data.indexed import DatasetWriter
from megatron_ext.data.summary import CountLog

_NDARRAY_DTYPES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
                   34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_SCALARS = {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"}


class MDSError(ValueError):
    """The MDS input as a whole cannot be read."""


_PACKAGES = {"zstd": "zstandard", "br": "brotli", "snappy": "python-snappy"}


def _decompressor(algo: str):
    if algo == "zstd":
        import zstandard  # the data extra's zstd library: prepare_data reads .zst inputs with it too

        return lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if algo == "br":
        import brotli

        return brotli.decompress
    import snappy

    return snappy.decompress


def _decompress(data: bytes, compression: str, shard: str) -> bytes:
    algo = compression.split(":")[0]
    if algo == "gz":
        return gzip.decompress(data)
    if algo == "bz2":
        return bz2.decompress(data)
    if algo not in _PACKAGES:
        raise MDSError(f"{shard}: unknown compression '{compression}'")
    try:
        decompress = _decompressor(algo)
    except ImportError:
        raise MDSError(f"{shard}: {algo}-compressed; pip install {_PACKAGES[algo]}") from None
    return decompress(data)


def _decode(encoding: str, data: bytes) -> object:
    if encoding == "str":
        return data.decode("utf-8")
    if encoding == "bytes":
        return data
    if encoding == "int":
        return int(np.frombuffer(data, np.int64)[0])
    if encoding in _SCALARS:
        return np.frombuffer(data, encoding)[0].item()
    if encoding in ("str_int", "str_float"):
        return (int if encoding == "str_int" else float)(data.decode())
    if encoding == "json":
        return json.loads(data)
    if encoding.startswith("ndarray"):
        _, _, spec = encoding.partition(":")
        dtype, _, shape = spec.partition(":")
        at = 0
        if not dtype:
            dtype, at = _NDARRAY_DTYPES[data[0]], 1
        if shape:
            dims = tuple(int(d) for d in shape.split(","))
        else:
            ndim, shape_bytes = data[at] >> 2, 2 ** (data[at] % 4)
            dims = tuple(np.frombuffer(data, f"u{shape_bytes}", count=ndim, offset=at + 1))
            at += 1 + ndim * shape_bytes
        return np.frombuffer(data, dtype, offset=at).reshape(dims)
    raise MDSError(f"column encoding '{encoding}' is not supported (pickle columns are refused as unsafe)")


def _column_sizes(blob: bytes, sizes: List[Optional[int]]) -> Tuple[List[int], int]:
    """Each column's byte size in one sample (variable sizes lead the sample as u32), and where the data starts."""
    at, out = 0, []
    for size in sizes:
        if size is None:
            size = int(np.frombuffer(blob, np.uint32, count=1, offset=at)[0])
            at += 4
        out.append(size)
    if at + sum(out) != len(blob):
        raise ValueError(f"columns take {at + sum(out):,} bytes of a {len(blob):,}-byte sample")
    return out, at


@dataclass
class _Shard:
    path: Path
    info: dict

    def _data(self) -> Tuple[str, bytes]:
        raw = self.path / self.info["raw_data"]["basename"]
        if raw.exists():
            return str(raw), raw.read_bytes()
        if self.info.get("zip_data"):
            zipped = self.path / self.info["zip_data"]["basename"]
            if not zipped.exists():
                raise MDSError(f"shard missing: neither {raw} nor {zipped} exists")
            try:
                return str(zipped), _decompress(zipped.read_bytes(), self.info["compression"], str(zipped))
            except MDSError:
                raise
            except Exception as e:  # each decompressor has its own error types
                raise MDSError(f"{zipped}: corrupt shard, cannot decompress ({type(e).__name__}: {e})") from None
        raise MDSError(f"shard missing: {raw}")

    def samples(self) -> Iterator[Tuple[str, Dict[str, object]]]:
        """(origin, sample) of every sample; MDSError naming the shard file if it is corrupt."""
        name, data = self._data()
        origin = str(self.path / self.info["raw_data"]["basename"])
        try:
            count = int(np.frombuffer(data, np.uint32, count=1)[0])
            offsets = np.frombuffer(data, np.uint32, count=count + 1, offset=4).astype(np.int64)
        except ValueError:
            raise MDSError(f"{name}: corrupt shard: {len(data):,} bytes cannot hold its sample table") from None
        samples, size = self.info.get("samples", count), self.info["raw_data"].get("bytes") or len(data)
        if (count, len(data)) != (samples, size) or (np.diff(offsets) < 0).any() or offsets[0] < 4 * (count + 2) \
                or offsets[-1] != len(data):
            raise MDSError(f"{name}: corrupt shard: {count:,} samples in {len(data):,} bytes, index.json says "
                           f"{samples:,} in {size:,}, and its sample table must lie within them")
        names, encodings, sizes = self.info["column_names"], self.info["column_encodings"], self.info["column_sizes"]
        for i in range(count):
            blob = data[offsets[i]:offsets[i + 1]]
            try:
                lengths, at = _column_sizes(blob, sizes)
                sample = {}
                for column, encoding, size in zip(names, encodings, lengths):
                    sample[column] = _decode(encoding, blob[at:at + size])
                    at += size
            except MDSError:
                raise
            except Exception as e:  # numpy, utf-8, json, int parsing: a column that is not what index.json says
                raise MDSError(f"{name}: corrupt shard: sample {i} does not decode ({type(e).__name__}: {e})") from None
            yield f"{origin}:sample {i}", sample


def find_shards(root: str) -> List[_Shard]:
    """Every shard under ``root``: an MDS folder (index.json) or a tree of them, in path order."""
    path = Path(root)
    if not path.exists():
        raise MDSError(f"MDS input not found: {root}")
    indexes = sorted(path.rglob("index.json"))
    if not indexes:
        raise MDSError(f"no index.json under {root}: not an MDS dataset")
    shards = []
    for index in indexes:
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise MDSError(f"{index}: not valid JSON ({e})") from None
        for info in meta.get("shards", []):
            if info.get("format") != "mds" or info.get("version") != 2:
                raise MDSError(f"{index}: shard format {info.get('format')} v{info.get('version')} is not MDS v2")
            shards.append(_Shard(index.parent, info))
    return shards


def document_spans(sample: Dict[str, object]) -> Tuple[np.ndarray, int]:
    """(spans [N, 2], tokens outside every span) of a sample; ValueError if it is inconsistent."""
    tokens = np.asarray(sample["input_ids"]).reshape(-1)
    if "length" in sample and int(sample["length"]) != len(tokens):
        raise ValueError(f"'length' {sample['length']} != {len(tokens)} input_ids")
    if "indices" not in sample:
        return np.array([[0, len(tokens)]]), 0
    spans = np.asarray(sample["indices"], dtype=np.int64).reshape(-1, 2)
    if (spans[:, 1] <= spans[:, 0]).any() or spans.min() < 0 or spans.max() > len(tokens):
        raise ValueError("a document span is empty or outside input_ids")
    if (spans[1:, 0] < spans[:-1, 1]).any():
        raise ValueError("document spans overlap or are out of order")
    if "mask" in sample:
        mask = np.asarray(sample["mask"]).reshape(-1)
        if mask.size != len(tokens):
            raise ValueError(f"mask has {mask.size} values for {len(tokens)} input_ids")
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError("mask values are not 0/1")
    return spans, len(tokens) - int((spans[:, 1] - spans[:, 0]).sum())


@dataclass
class ImportReport:
    samples: int = 0
    tokens_outside_documents: int = 0
    skips: CountLog = field(default_factory=CountLog)
    lengths: array = field(default_factory=lambda: array("q"))
    outputs: List[dict] = field(default_factory=list)


def _domain_prefix(output_prefix: str, domain: str) -> str:
    return str(Path(output_prefix) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", domain) or "unnamed"))


def import_mds(root: str, output_prefix: str, split_by_domain: bool = False,
               tokenizer: Optional[dict] = None) -> ImportReport:
    """Convert every MDS sample under ``root``. ``tokenizer`` (Tokenizer.describe()) is
    recorded in the metadata so the training side can check it against the model. Each
    output's metadata counts its own skips and dropped tokens; the report has the totals."""
    shards = find_shards(root)
    with_mask = {"mask" in s.info["column_names"] for s in shards}
    if len(with_mask) > 1:
        raise MDSError(f"{root}: some shards have a 'mask' column and some do not")
    with_mask = with_mask.pop()
    for column in ("input_ids",):
        missing = [str(s.path) for s in shards if column not in s.info["column_names"]]
        if missing:
            raise MDSError(f"shards without an '{column}' column: {missing[:3]}")
    vocab = tokenizer["vocab_size"] if tokenizer else 2 ** 31 - 1
    writers: Dict[str, DatasetWriter] = {}
    per_domain: Dict[str, ImportReport] = {}  # the same counts, per output
    report = ImportReport()
    try:
        for shard in shards:
            for origin, sample in shard.samples():
                domain = str(sample.get("domain", "")) if split_by_domain else ""
                counts = per_domain.setdefault(domain, ImportReport())
                report.samples += 1
                counts.samples += 1
                tokens = np.asarray(sample["input_ids"]).reshape(-1).astype(np.int64)
                try:
                    spans, outside = document_spans(sample)
                    skip = None
                except ValueError as e:
                    skip = f"inconsistent sample: {e}"
                if skip is None and len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
                    skip = f"token ids outside [0, {vocab:,}) (the tokenizer's vocabulary)"
                if skip:
                    for r in (report, counts):
                        r.skips.add(skip, origin)
                    continue
                for r in (report, counts):
                    r.tokens_outside_documents += outside
                mask = np.asarray(sample["mask"]).reshape(-1).astype(np.uint8) if with_mask else None
                if domain not in writers:
                    prefix = _domain_prefix(output_prefix, domain) if split_by_domain else output_prefix
                    writers[domain] = DatasetWriter(prefix, vocab, with_loss_mask=with_mask)
                for start, end in spans:
                    writers[domain].add(tokens[start:end], None if mask is None else mask[start:end])
                    report.lengths.append(int(end - start))
        if not writers:
            raise MDSError(f"{root}: no usable sample ({report.samples:,} read, all skipped): nothing written")
        for domain, writer in sorted(writers.items()):
            counts = per_domain[domain]
            meta = {"tokenizer": tokenizer, "source": str(root), "imported_from": "mds", "domain": domain or None,
                    "samples": counts.samples, "skipped": counts.skips.counts(),
                    "tokens_outside_documents": counts.tokens_outside_documents}
            report.outputs.append({"prefix": writer.prefix, "domain": domain, **writer.finish(meta)})
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return report
