"""Packed samples -> model inputs: labels, loss weights, positions, cu_seqlens, CP padding.

Two layouts:
- every sample is a single full-length document: plain causal ``[b, s]`` batches (no THD),
  which is also what FP8 attention can train on Hopper;
- otherwise THD: the micro-batch is flattened to one row, each document padded to a
  multiple of 2 x CP (TE's per-document context-parallel split needs it), and
  ``cu_seqlens`` (real lengths, what attention sees) differs from ``cu_seqlens_padded``
  (memory layout). Padding tokens carry no loss and are excluded from attention.

The first token of a document is never a target of the previous document's last token:
position t predicts token t+1 only inside one document.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import List, Optional, Sequence

import numpy as np
import torch

from megatron_ext.data.sample import PackedSample


@dataclass
class MicroBatch:
    tokens: torch.Tensor        # [b, T] int64
    labels: torch.Tensor        # [b, T] int64, the next token inside the document
    loss_weight: torch.Tensor   # [b, T] float32, 1 where labels[t] is a training target
    position_ids: torch.Tensor  # [b, T] int64, restarting at each document
    domain_ids: torch.Tensor    # [b, T] int64
    # THD only (None = plain causal rows): int32 [n_docs + 1] real / padded boundaries.
    cu_seqlens: Optional[torch.Tensor] = None
    cu_seqlens_padded: Optional[torch.Tensor] = None
    max_seqlen: int = 0
    # Real document lengths, for attention FLOPs (sum of squares).
    doc_lengths: Optional[List[int]] = None

    @property
    def is_thd(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_real_tokens(self) -> int:
        return int(sum(self.doc_lengths))

    def to(self, device) -> "MicroBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return MicroBatch(**moved)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _targets(sample: PackedSample):
    """Per-token labels and loss weights of one sample, before any padding."""
    tokens = sample.tokens
    n = len(tokens)
    labels = np.zeros(n, dtype=np.int64)
    labels[:-1] = tokens[1:]
    target_ok = np.ones(n, dtype=np.float32) if sample.loss_mask is None else np.zeros(n, dtype=np.float32)
    if sample.loss_mask is not None:
        target_ok[:-1] = sample.loss_mask[1:]
    weight = target_ok.copy()
    weight[np.cumsum(sample.doc_lengths) - 1] = 0.0  # a document's last token has no target
    return labels, weight


def pack_micro_batch(samples: Sequence[PackedSample], pad_multiple: int = 1, total_multiple: int = 1) -> MicroBatch:
    """Build one micro-batch.

    pad_multiple: every document is padded to a multiple of this (2 x CP, or 1).
    total_multiple: the flattened THD length is padded to a multiple of this
        (config.validate.sequence_multiple: whole CP and sequence-parallel shares, 16 tokens a
        rank under FP8); the tail padding joins the last document.
    """
    if total_multiple % pad_multiple:
        raise ValueError(f"total_multiple {total_multiple} must be a multiple of pad_multiple {pad_multiple}")
    seq_length = len(samples[0].tokens)
    single_doc = all(len(s.doc_lengths) == 1 for s in samples) and seq_length % total_multiple == 0
    per_sample = [_targets(s) for s in samples]
    doc_lengths = [int(d) for s in samples for d in s.doc_lengths]

    if single_doc:
        stack = lambda xs, dt: torch.from_numpy(np.stack(xs).astype(dt))  # noqa: E731
        b = len(samples)
        return MicroBatch(
            tokens=stack([s.tokens for s in samples], np.int64),
            labels=stack([lw[0] for lw in per_sample], np.int64),
            loss_weight=stack([lw[1] for lw in per_sample], np.float32),
            position_ids=torch.arange(seq_length).repeat(b, 1),
            domain_ids=torch.tensor([[s.domain] for s in samples]).repeat(1, seq_length),
            max_seqlen=seq_length,
            doc_lengths=doc_lengths,
        )

    padded_lengths = [_round_up(d, pad_multiple) for d in doc_lengths]
    total = _round_up(sum(padded_lengths), total_multiple)
    padded_lengths[-1] += total - sum(padded_lengths)
    tokens = np.zeros(total, dtype=np.int64)
    labels = np.zeros(total, dtype=np.int64)
    weight = np.zeros(total, dtype=np.float32)
    positions = np.zeros(total, dtype=np.int64)
    domains = np.zeros(total, dtype=np.int64)
    out = 0
    doc_iter = iter(padded_lengths)
    for sample, (lab, w) in zip(samples, per_sample):
        src = 0
        for d in sample.doc_lengths:
            d, padded = int(d), next(doc_iter)
            tokens[out:out + d] = sample.tokens[src:src + d]
            labels[out:out + d] = lab[src:src + d]
            weight[out:out + d] = w[src:src + d]
            positions[out:out + padded] = np.arange(padded)
            domains[out:out + padded] = sample.domain
            out, src = out + padded, src + d
    cu = np.concatenate([[0], np.cumsum(doc_lengths)])
    cu_padded = np.concatenate([[0], np.cumsum(padded_lengths)])
    as_row = lambda x: torch.from_numpy(x)[None]  # noqa: E731
    return MicroBatch(
        tokens=as_row(tokens), labels=as_row(labels), loss_weight=as_row(weight),
        position_ids=as_row(positions), domain_ids=as_row(domains),
        # TE reads both: document i has cu[i+1] - cu[i] real tokens starting at cu_padded[i].
        cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
        cu_seqlens_padded=torch.from_numpy(cu_padded.astype(np.int32)),
        max_seqlen=int(max(padded_lengths)),
        doc_lengths=doc_lengths,
    )


def padding_joins_documents(mb: MicroBatch) -> MicroBatch:
    """Attention treats each document's padding as the document's last tokens.

    Exact: padding sits after the real tokens, so causally no real token sees it, and it
    carries no loss, so it sends no gradient back. Why: Transformer Engine's ring (p2p)
    context-parallel backward (2.20.2 / cuDNN 9.14) gives wrong gradients for every weight
    when a rank's chunk of a document holds padding only (short documents, e.g. of 1 or 3
    tokens at CP=2; reports/cp_p2p.md); counted as tokens, no chunk is empty. Both
    boundaries are then the same tensor, which TE reads as "no padding between sequences".
    """
    return replace(mb, cu_seqlens=mb.cu_seqlens_padded) if mb.is_thd else mb


def cp_partition_index(mb: MicroBatch, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Token indices this CP rank keeps: per document, chunks r and 2*CP-1-r of 2*CP.

    Uses Transformer Engine's own partitioner so that the split is exactly the one its
    context-parallel attention and THD RoPE expect.
    """
    import transformer_engine_torch as tex

    length = mb.tokens.shape[1]
    cu = mb.cu_seqlens_padded if mb.is_thd else torch.tensor([0, length], dtype=torch.int32)
    return tex.thd_get_partitioned_indices(cu.to(mb.tokens.device), length, cp_size, cp_rank).long()


def split_for_context_parallel(mb: MicroBatch, index: torch.Tensor) -> MicroBatch:
    """Keep this CP rank's tokens; the boundaries stay global (TE splits them itself)."""
    take = lambda t: t.index_select(1, index)  # noqa: E731
    return replace(mb, tokens=take(mb.tokens), labels=take(mb.labels), loss_weight=take(mb.loss_weight),
                   position_ids=take(mb.position_ids), domain_ids=take(mb.domain_ids))


def for_context_parallel_rank(mb: MicroBatch, cp_size: int, cp_rank: int, ring_attention: bool) -> MicroBatch:
    """What one CP rank trains on: under ring attention the padding joins its documents
    first (padding_joins_documents), then the rank keeps its chunks of every document."""
    if ring_attention:
        mb = padding_joins_documents(mb)
    if cp_size > 1:
        mb = split_for_context_parallel(mb, cp_partition_index(mb, cp_size, cp_rank))
    return mb
