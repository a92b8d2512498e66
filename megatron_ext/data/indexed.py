"""Prepared datasets on disk: Megatron-Core indexed datasets, a loss-mask sibling, metadata.

    <prefix>.bin / .idx              tokens, one sequence per document (IndexedDatasetBuilder)
    <prefix>.loss_mask.bin / .idx    optional (SFT): one uint8 per token, same sequence lengths
    <prefix>.meta.json               tokenizer, counts, max token id, how the data was made

The loss mask is a second indexed dataset rather than a new format, so both halves stay
readable by any Megatron tool. A mask value is 1 where the token is a training target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

LOSS_MASK_SUFFIX = ".loss_mask"
META_SUFFIX = ".meta.json"


class DatasetWriter:
    """Writes one dataset under temporary names and renames it on ``finish``, so an
    interrupted run never leaves files that look like a complete dataset."""

    def __init__(self, prefix: str, vocab_size: int, with_loss_mask: bool):
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.prefix, self._tmp = prefix, prefix + ".tmp"
        self._tokens = IndexedDatasetBuilder(self._tmp + ".bin", dtype=DType.optimal_dtype(vocab_size))
        self._mask = IndexedDatasetBuilder(self._tmp + LOSS_MASK_SUFFIX + ".bin", dtype=np.uint8) \
            if with_loss_mask else None
        self.documents, self.tokens, self.max_token_id = 0, 0, -1

    def add(self, tokens: np.ndarray, loss_mask: Optional[np.ndarray] = None) -> None:
        if (loss_mask is not None) != (self._mask is not None) or (loss_mask is not None and len(loss_mask) != len(tokens)):
            raise ValueError(f"{self.prefix}: every document needs a loss mask of its length, or none does")
        self._tokens.add_document(tokens, [len(tokens)])
        if self._mask is not None:
            self._mask.add_document(loss_mask, [len(loss_mask)])
        self.documents += 1
        self.tokens += len(tokens)
        self.max_token_id = max(self.max_token_id, int(tokens.max()))

    def finish(self, meta: dict) -> dict:
        """Finalize, rename into place and write the metadata (returned, with counts added)."""
        parts = [("", self._tokens)] + ([(LOSS_MASK_SUFFIX, self._mask)] if self._mask is not None else [])
        for suffix, builder in parts:
            builder.finalize(self._tmp + suffix + ".idx")
        for suffix, _ in parts:
            for ext in (".bin", ".idx"):
                os.replace(self._tmp + suffix + ext, self.prefix + suffix + ext)
        meta = {**meta, "documents": self.documents, "tokens": self.tokens, "max_token_id": self.max_token_id,
                "loss_mask": self._mask is not None}
        Path(self.prefix + META_SUFFIX).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def abort(self) -> None:
        for suffix in ("", LOSS_MASK_SUFFIX):
            for ext in (".bin", ".idx"):
                Path(self._tmp + suffix + ext).unlink(missing_ok=True)


class PreparedDataset:
    """Read side: document lengths, token/mask slices, metadata (None for foreign datasets)."""

    def __init__(self, prefix: str):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = prefix
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"no dataset at {prefix} (expected {prefix}.bin and {prefix}.idx)")
        try:
            self.tokens = IndexedDataset(prefix)
            has_mask = IndexedDataset.exists(prefix + LOSS_MASK_SUFFIX)
            self.loss_mask = IndexedDataset(prefix + LOSS_MASK_SUFFIX) if has_mask else None
        except (AssertionError, ValueError, OSError) as e:
            raise ValueError(f"{prefix}: not a readable Megatron indexed dataset ({e or type(e).__name__})") from None
        # Copies: Megatron's arrays are views of a memory map that closes with the dataset object.
        self.doc_lengths = np.array(self.tokens.sequence_lengths, dtype=np.int64)
        if self.loss_mask is not None and not np.array_equal(self.loss_mask.sequence_lengths, self.doc_lengths):
            raise ValueError(f"{prefix}{LOSS_MASK_SUFFIX}: document lengths differ from {prefix}'s")
        meta_path = Path(prefix + META_SUFFIX)
        self.meta: Optional[dict] = json.loads(meta_path.read_text()) if meta_path.exists() else None

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        tokens = self.tokens.get(doc, offset=start, length=end - start).astype(np.int64)
        mask = np.array(self.loss_mask.get(doc, offset=start, length=end - start)) if self.loss_mask is not None else None
        return tokens, mask
