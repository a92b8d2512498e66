"""The one sample format every dataset hands to the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np


@dataclass
class PackedSample:
    """``seq_length`` tokens holding one or more whole or cut documents.

    - ``doc_lengths``: lengths of the documents in order; they sum to ``len(tokens)``.
      Attention never crosses a boundary and the last token of a document has no target.
    - ``loss_mask``: 1 where the token is a training *target* (SFT: assistant tokens);
      None means every token is a target.
    - ``domain``: index into the dataset's ``domain_names`` (per-domain loss).
    """

    tokens: np.ndarray
    doc_lengths: np.ndarray
    loss_mask: Optional[np.ndarray] = None
    domain: int = 0

    def check(self, seq_length: int, vocab_size: Optional[int] = None) -> None:
        """Raise ValueError if the sample breaks the contract (cheap; called by the loader)."""
        if self.tokens.ndim != 1 or len(self.tokens) != seq_length:
            raise ValueError(f"sample has {self.tokens.shape} tokens, expected ({seq_length},)")
        if len(self.doc_lengths) == 0 or (self.doc_lengths <= 0).any() or int(self.doc_lengths.sum()) != seq_length:
            raise ValueError(f"document lengths {self.doc_lengths.tolist()[:8]}... must be > 0 and sum to {seq_length}")
        if self.loss_mask is not None and self.loss_mask.shape != self.tokens.shape:
            raise ValueError(f"loss mask shape {self.loss_mask.shape} != tokens shape {self.tokens.shape}")
        if vocab_size is not None and len(self.tokens) and (self.tokens.min() < 0 or self.tokens.max() >= vocab_size):
            raise ValueError(f"token ids span [{self.tokens.min()}, {self.tokens.max()}], outside the model's "
                             f"vocabulary of {vocab_size}")


class SampleDataset(Protocol):
    """Deterministic map from a global sample index to a sample (Megatron-style)."""

    domain_names: Sequence[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> PackedSample: ...

    def document_lengths(self, index: int) -> np.ndarray:
        """``self[index].doc_lengths`` without reading or making tokens: cheap enough to call for
        every sample of a global batch (data-parallel load balancing)."""
        ...
