"""ProLong's packing rules: how one domain's documents become samples of exactly seq_length tokens.

- long:  a sample is one seq_length chunk of one document (a document's tail shorter than
         seq_length is not used);
- short: documents in shuffled order are concatenated and cut every seq_length tokens; a
         document cut at the end of a sample continues at the start of the domain's next one;
- sft:   whole conversations in shuffled order are packed while they fit and never split; the
         rest of the sample is one padding segment without loss; longer conversations are dropped.

A packer maps a domain-local sample index to segments (document, start, end). Randomness
comes only from the generator it is given, and every epoch reshuffles, so a domain's samples
are a pure function of (its data, seq_length, seed).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Type

import numpy as np

PADDING = -1  # Segment.doc of an SFT sample's padding


@dataclass(frozen=True)
class Segment:
    doc: int
    start: int
    end: int


class Packer(ABC):
    def __init__(self, lengths: np.ndarray, seq_length: int, rng: np.random.Generator):
        self.lengths, self.seq_length, self.rng = lengths.astype(np.int64), seq_length, rng

    @property
    @abstractmethod
    def samples_per_epoch(self) -> float:
        """How many samples one pass over the domain's documents yields."""

    @abstractmethod
    def build(self, num_samples: int) -> None:
        """Lay out the first ``num_samples`` samples (over as many epochs as that takes)."""

    @abstractmethod
    def segments(self, sample: int) -> List[Segment]:
        """The pieces of documents that make up a sample, in order."""

    def notes(self) -> List[str]:
        """What of the data this packing does not use, for the mixture report."""
        return []

    def _epochs_of_permutations(self, items: int, epochs: int) -> np.ndarray:
        return np.concatenate([self.rng.permutation(items) for _ in range(max(epochs, 1))])


class LongChunks(Packer):
    def __init__(self, lengths, seq_length, rng):
        super().__init__(lengths, seq_length, rng)
        per_doc = self.lengths // seq_length
        self.chunk_doc = np.repeat(np.arange(len(per_doc)), per_doc)
        first_chunk = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        self.chunk_start = (np.arange(len(self.chunk_doc)) - first_chunk) * seq_length

    @property
    def samples_per_epoch(self) -> float:
        return float(len(self.chunk_doc))

    def build(self, num_samples: int) -> None:
        epochs = math.ceil(num_samples / max(len(self.chunk_doc), 1))
        self.order = self._epochs_of_permutations(len(self.chunk_doc), epochs)[:num_samples]

    def segments(self, sample: int) -> List[Segment]:
        chunk = self.order[sample]
        start = int(self.chunk_start[chunk])
        return [Segment(int(self.chunk_doc[chunk]), start, start + self.seq_length)]

    def notes(self) -> List[str]:
        tails = int(self.lengths.sum()) - len(self.chunk_doc) * self.seq_length
        return [f"document tails shorter than a sample, unused: {tails:,} tokens "
                f"({100 * tails / max(int(self.lengths.sum()), 1):.1f}%)"] if tails else []


class ConcatenatedDocuments(Packer):
    @property
    def samples_per_epoch(self) -> float:
        return float(self.lengths.sum()) / self.seq_length

    def build(self, num_samples: int) -> None:
        # Megatron's GPTDataset sample index (C++ helper from the wheel): sample j runs from
        # (document_index[sample_index[j, 0]], offset sample_index[j, 1]) to the same pair of j + 1.
        from megatron.core.datasets.helpers import build_sample_idx

        total = int(self.lengths.sum())
        epochs = max(math.ceil(num_samples * self.seq_length / total), 1)
        epochs += (epochs * total) // self.seq_length < num_samples
        self.document_index = self._epochs_of_permutations(len(self.lengths), epochs).astype(np.int32)
        self.sample_index = build_sample_idx(self.lengths.astype(np.int32), self.document_index, self.seq_length,
                                             epochs, total, drop_last_partial_sequence=True,
                                             add_extra_token_to_sequence=False)[:num_samples + 1]

    def segments(self, sample: int) -> List[Segment]:
        (first, start), (last, end) = self.sample_index[sample], self.sample_index[sample + 1]
        out = []
        for position in range(int(first), int(last) + 1):
            doc = int(self.document_index[position])
            lo = int(start) if position == first else 0
            hi = int(end) if position == last else int(self.lengths[doc])
            if hi > lo:
                out.append(Segment(doc, lo, hi))
        return out


class PackedConversations(Packer):
    def __init__(self, lengths, seq_length, rng):
        super().__init__(lengths, seq_length, rng)
        self.fitting = np.nonzero((self.lengths > 0) & (self.lengths <= seq_length))[0]
        self.order: List[np.ndarray] = []       # conversations, epoch after epoch
        self.bounds: List[np.ndarray] = []      # per epoch: sample k holds order[bounds[k]:bounds[k + 1]]
        self._pack_epoch()

    def _pack_epoch(self) -> None:
        order = self.fitting[self.rng.permutation(len(self.fitting))]
        bounds, used = [0], 0
        for i, length in enumerate(self.lengths[order]):
            if used + length > self.seq_length:
                bounds.append(i)
                used = 0
            used += length
        bounds.append(len(order))
        self.order.append(order)
        self.bounds.append(np.asarray(bounds))

    @property
    def samples_per_epoch(self) -> float:
        return float(len(self.bounds[0]) - 1)

    def build(self, num_samples: int) -> None:
        while sum(len(b) - 1 for b in self.bounds) < num_samples:
            self._pack_epoch()
        self.epoch_first_sample = np.cumsum([0] + [len(b) - 1 for b in self.bounds])

    def segments(self, sample: int) -> List[Segment]:
        epoch = int(np.searchsorted(self.epoch_first_sample, sample, side="right")) - 1
        k = sample - self.epoch_first_sample[epoch]
        docs = self.order[epoch][self.bounds[epoch][k]:self.bounds[epoch][k + 1]]
        out = [Segment(int(d), 0, int(self.lengths[d])) for d in docs]
        used = sum(s.end for s in out)
        if used < self.seq_length:
            out.append(Segment(PADDING, 0, self.seq_length - used))
        return out

    def notes(self) -> List[str]:
        dropped = int((self.lengths > self.seq_length).sum())
        capacity = self.samples_per_epoch * self.seq_length
        out = [f"padding: {100 * (1 - self.lengths[self.fitting].sum() / capacity):.1f}% of sample tokens"] if capacity else []
        if dropped:
            out.append(f"conversations longer than a sample, dropped: {dropped:,} of {len(self.lengths):,}")
        return out


PACKERS: Dict[str, Type[Packer]] = {"long": LongChunks, "short": ConcatenatedDocuments, "sft": PackedConversations}
