"""Synthetic packed samples with a configurable document-length mix (tests, benchmarks).

Each document repeats a motif of ``period`` tokens. A motif follows one fixed token
permutation (a bigram chain a model learns in a few steps, so the loss visibly falls), and
only attention within the document predicts where the motif wraps around.
"""

from __future__ import annotations

import numpy as np

from megatron_ext.config.schema import SyntheticDataConfig
from megatron_ext.data.sample import PackedSample


class SyntheticDataset:
    def __init__(self, cfg: SyntheticDataConfig, seq_length: int, vocab_size: int, seed: int):
        self.cfg, self.seq_length, self.vocab_size, self.seed = cfg, seq_length, vocab_size, seed
        self.domain_names = [f"synthetic_{i}" for i in range(cfg.num_domains)]
        self.successor = np.random.default_rng(seed).permutation(vocab_size)

    def __len__(self) -> int:
        return self.cfg.num_samples

    def doc_lengths(self, rng: np.random.Generator) -> np.ndarray:
        c, n = self.cfg, self.seq_length
        if rng.random() < c.single_document_fraction:
            return np.array([n], dtype=np.int64)
        hi = min(c.doc_length_max or n, n)
        lengths, left = [], n
        while left > 0:
            length = int(np.clip(rng.lognormal(np.log(c.doc_length_median), c.doc_length_sigma), c.doc_length_min, hi))
            lengths.append(min(length, left))
            left -= lengths[-1]
        return np.array(lengths, dtype=np.int64)

    def document_lengths(self, index: int) -> np.ndarray:
        """Sample ``index``'s document lengths: the first draws of the generator __getitem__ uses."""
        return self.doc_lengths(np.random.default_rng([self.seed, index]))

    def __getitem__(self, index: int) -> PackedSample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        rng = np.random.default_rng([self.seed, index])
        lengths = self.doc_lengths(rng)
        docs, masks = [], []
        for length in lengths:
            motif = np.empty(self.cfg.period, dtype=np.int64)
            motif[0] = rng.integers(0, self.vocab_size)
            for i in range(1, self.cfg.period):
                motif[i] = self.successor[motif[i - 1]]
            docs.append(np.resize(motif, length))
            if self.cfg.response_only_loss:
                # Alternate prompt (no loss) and response (loss) spans of random length.
                spans = np.cumsum(rng.integers(8, 64, size=length // 8 + 2))
                masks.append((np.searchsorted(spans, np.arange(length), side="right") % 2).astype(np.uint8))
        return PackedSample(
            tokens=np.concatenate(docs).astype(np.int64),
            doc_lengths=lengths,
            loss_mask=np.concatenate(masks) if masks else None,
            domain=int(index % self.cfg.num_domains),
        )
