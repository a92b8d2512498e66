"""Prepared datasets on disk: Megatron-Core indexed datasets, a loss-mask sibling, metadata.

    <prefix>.bin / .idx              tokens, one sequence per document (Megatron's IndexedDataset format)
    <prefix>.loss_mask.bin / .idx    optional (SFT): one uint8 per token, same sequence lengths
    <prefix>.meta.json               tokenizer, counts, max token id, sha256 of each file, how the data was made

The loss mask is a second indexed dataset rather than a new format, so both halves stay
readable by any Megatron tool. A mask value is 1 where the token is a training target.

The writer is ours, in numpy: Megatron-Core's IndexedDatasetBuilder writes the same bytes, but
importing Megatron-Core costs every preparation run ~6 s and ~450 MB before the first token.
Reading uses Megatron's IndexedDataset, after checking that the files agree with each other
(a truncated .bin would otherwise fail only when a sample reaches its end, mid-run).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from array import array
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

LOSS_MASK_SUFFIX = ".loss_mask"
META_SUFFIX = ".meta.json"
FILE_SUFFIXES = (".bin", ".idx", LOSS_MASK_SUFFIX + ".bin", LOSS_MASK_SUFFIX + ".idx")

# Megatron-Core's index layout (megatron/core/datasets/indexed_dataset.py, _IndexWriter):
# header, version 1 (u64), dtype code (u8), sequence count (u64), document count (u64), then
# int32 sequence lengths, int64 byte offsets, int64 document boundaries (sequence indices).
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int32): 4, np.dtype(np.uint16): 8}


def token_dtype(vocab_size: int) -> np.dtype:
    """Megatron's DType.optimal_dtype: uint16 below 65,500 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size < 65500 else np.int32)


def file_sha256(path: str, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class WriteError(OSError):
    """Writing a file failed (disk full, quota, file-size limit)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns a failed write into a WriteError naming the file (file.write() errors name none)."""
    try:
        yield
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from None


class _SequenceFile:
    """One .bin being written under a temporary name, hashed as it goes; its .idx at the end."""

    def __init__(self, path: str, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.lengths = array("q")
        self.digest = hashlib.sha256()
        with writing(path):
            self.file = open(path, "wb")

    def add(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        with writing(self.path):
            self.file.write(data)
        self.digest.update(data)
        self.lengths.append(len(values))

    def finish(self, idx_path: str) -> Tuple[str, str]:
        """Close the .bin and write the .idx; returns both files' sha256."""
        with writing(self.path):
            self.file.close()
        lengths = np.frombuffer(self.lengths, dtype=np.int64)
        pointers = (np.cumsum(lengths) - lengths) * self.dtype.itemsize
        index = b"".join([_INDEX_HEADER, struct.pack("<Q", 1), struct.pack("<B", _DTYPE_CODES[self.dtype]),
                          struct.pack("<Q", len(lengths)), struct.pack("<Q", len(lengths) + 1),
                          lengths.astype(np.int32).tobytes(), pointers.astype(np.int64).tobytes(),
                          np.arange(len(lengths) + 1, dtype=np.int64).tobytes()])
        with writing(idx_path):
            Path(idx_path).write_bytes(index)
        return self.digest.hexdigest(), hashlib.sha256(index).hexdigest()

    def close(self) -> None:
        if not self.file.closed:
            try:
                self.file.close()
            except OSError:  # the buffered tail cannot be written (disk full): the file goes anyway
                pass


class DatasetWriter:
    """Writes one dataset under temporary names (``add``, ``finish``) and renames it into place
    (``commit``): a failed or interrupted run (disk full, Ctrl-C) that calls ``abort`` leaves
    nothing behind, and never a half-written dataset."""

    def __init__(self, prefix: str, vocab_size: int, with_loss_mask: bool):
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.prefix, self._tmp = prefix, prefix + ".tmp"
        self.documents, self.tokens, self.max_token_id = 0, 0, -1
        self._files: Dict[str, _SequenceFile] = {}
        try:
            self._files[""] = _SequenceFile(self._tmp + ".bin", token_dtype(vocab_size))
            if with_loss_mask:
                self._files[LOSS_MASK_SUFFIX] = _SequenceFile(self._tmp + LOSS_MASK_SUFFIX + ".bin", np.dtype(np.uint8))
        except BaseException:
            self.abort()
            raise

    def add(self, tokens: np.ndarray, loss_mask: Optional[np.ndarray] = None) -> None:
        with_mask = LOSS_MASK_SUFFIX in self._files
        if (loss_mask is not None) != with_mask or (loss_mask is not None and len(loss_mask) != len(tokens)):
            raise ValueError(f"{self.prefix}: every document needs a loss mask of its length, or none does")
        self._files[""].add(tokens)
        if loss_mask is not None:
            self._files[LOSS_MASK_SUFFIX].add(loss_mask)
        self.documents += 1
        self.tokens += len(tokens)
        self.max_token_id = max(self.max_token_id, int(tokens.max()))

    def finish(self, meta: dict) -> dict:
        """Write the indices and the metadata, still under temporary names; returns the
        metadata with counts and checksums added."""
        sha256 = {}
        for suffix, f in self._files.items():
            sha256[suffix + ".bin"], sha256[suffix + ".idx"] = f.finish(self._tmp + suffix + ".idx")
        meta = {**meta, "documents": self.documents, "tokens": self.tokens, "max_token_id": self.max_token_id,
                "loss_mask": LOSS_MASK_SUFFIX in self._files, "sha256": sha256}
        with writing(self._tmp + META_SUFFIX):
            Path(self._tmp + META_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def commit(self) -> None:
        """Rename the finished dataset into place (renames need no space). The old metadata goes
        first and the new comes last, so the files never pair with another run's metadata."""
        Path(self.prefix + META_SUFFIX).unlink(missing_ok=True)
        for suffix in FILE_SUFFIXES:
            if os.path.exists(self._tmp + suffix):
                os.replace(self._tmp + suffix, self.prefix + suffix)
            else:  # an earlier dataset's loss mask would be read with this one's tokens
                Path(self.prefix + suffix).unlink(missing_ok=True)
        os.replace(self._tmp + META_SUFFIX, self.prefix + META_SUFFIX)

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        for suffix in FILE_SUFFIXES + (META_SUFFIX,):
            Path(self._tmp + suffix).unlink(missing_ok=True)


def _read_meta(prefix: str) -> Optional[dict]:
    path = Path(prefix + META_SUFFIX)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}): prepare the dataset again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    return meta


def _open_indexed(prefix: str):
    """Megatron's IndexedDataset at ``prefix`` after checking that .idx and .bin agree in size."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    bin_size = os.path.getsize(prefix + ".bin")
    if bin_size == 0:
        raise ValueError(f"{prefix}.bin is empty: a dataset without documents")
    try:
        ds = IndexedDataset(prefix)
    except (AssertionError, ValueError, OSError, KeyError) as e:
        raise ValueError(f"{prefix}.idx: not a readable Megatron index ({e or type(e).__name__}); "
                         f"truncated, or not written by an indexed-dataset builder") from None
    lengths, pointers = ds.index.sequence_lengths, ds.index.sequence_pointers
    expected = int(pointers[-1]) + int(lengths[-1]) * ds.index.dtype_size if len(lengths) else 0
    if bin_size != expected:
        raise ValueError(f"{prefix}.bin has {bin_size:,} bytes but {prefix}.idx describes {expected:,} "
                         f"({int(lengths.sum()):,} tokens of {np.dtype(ds.index.dtype).name}): the .bin is "
                         f"{'truncated' if bin_size < expected else 'longer'}, or the two come from different runs")
    return ds


class PreparedDataset:
    """Read side: document lengths, token/mask slices, metadata (None for foreign datasets).

    Opening checks what is cheap to check (sizes, counts, a stale loss mask); ``verify_checksums``
    also hashes every file against the sha256 recorded at preparation time (catches same-size
    corruption; costs a full read of the data)."""

    def __init__(self, prefix: str, verify_checksums: bool = False):
        self.prefix = prefix
        missing = [prefix + s for s in (".bin", ".idx") if not os.path.exists(prefix + s)]
        if missing:
            raise FileNotFoundError(f"no dataset at {prefix}: {' and '.join(Path(m).name for m in missing)} not found")
        self.meta: Optional[dict] = _read_meta(prefix)
        self.tokens = _open_indexed(prefix)
        # Copies: Megatron's arrays are views of a memory map that closes with the dataset object.
        self.doc_lengths = np.array(self.tokens.sequence_lengths, dtype=np.int64)
        self.loss_mask = self._open_loss_mask()
        if self.meta is not None:
            self._check_meta_counts()
            if verify_checksums:
                self._verify_checksums()
        elif verify_checksums:
            raise ValueError(f"{prefix}: no {META_SUFFIX}, so no checksums to verify")

    def _open_loss_mask(self):
        mask_prefix = self.prefix + LOSS_MASK_SUFFIX
        present = [mask_prefix + s for s in (".bin", ".idx") if os.path.exists(mask_prefix + s)]
        expected = (self.meta or {}).get("loss_mask")
        stale = (f"left over from an earlier preparation at this prefix? delete {' and '.join(present)} or "
                 f"prepare the dataset again")
        if present and expected is False:
            raise ValueError(f"{self.prefix}{META_SUFFIX} says the dataset has no loss mask, but "
                             f"{' and '.join(present)} exist: {stale}")
        if len(present) == 1 or (expected and not present):
            raise ValueError(f"{self.prefix}: loss mask incomplete ({mask_prefix}.bin and .idx must both exist)")
        if not present:
            return None
        mask = _open_indexed(mask_prefix)
        if not np.array_equal(mask.sequence_lengths, self.doc_lengths):
            raise ValueError(f"{mask_prefix}.bin/.idx: {len(mask.sequence_lengths):,} documents of "
                             f"{int(mask.sequence_lengths.sum()):,} tokens, but {self.prefix}.bin/.idx has "
                             f"{len(self.doc_lengths):,} of {int(self.doc_lengths.sum()):,}: {stale}")
        return mask

    def _check_meta_counts(self) -> None:
        recorded = (self.meta.get("documents"), self.meta.get("tokens"))
        actual = (len(self.doc_lengths), int(self.doc_lengths.sum()))
        if None not in recorded and tuple(recorded) != actual:
            raise ValueError(f"{self.prefix}{META_SUFFIX} records {recorded[0]:,} documents of {recorded[1]:,} tokens, "
                             f"but {self.prefix}.bin/.idx hold {actual[0]:,} of {actual[1]:,}: the files come "
                             f"from different runs; prepare the dataset again")

    def _verify_checksums(self) -> None:
        recorded: Dict[str, str] = self.meta.get("sha256") or {}
        if not recorded:
            raise ValueError(f"{self.prefix}{META_SUFFIX} records no sha256 (prepared by an older version): "
                             f"prepare it again, or turn data.verify_checksums off")
        for suffix, digest in recorded.items():
            if file_sha256(self.prefix + suffix) != digest:
                raise ValueError(f"{self.prefix}{suffix}: sha256 differs from the one recorded in "
                                 f"{self.prefix}{META_SUFFIX} when it was prepared: the file is corrupt")

    def __len__(self) -> int:
        return len(self.doc_lengths)

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        tokens = self.tokens.get(doc, offset=start, length=end - start).astype(np.int64)
        mask = np.array(self.loss_mask.get(doc, offset=start, length=end - start)) if self.loss_mask is not None else None
        return tokens, mask

