"""One micro-batch through the model, and the token-averaged loss.

The loss function returns (sum of token losses, number of loss tokens, report); with
``calculate_per_token_loss`` Megatron's ``finalize_model_grads`` divides the gradients by the
number of loss tokens summed over DP x CP and all micro-batches: the loss is averaged over
every loss token of the global batch, not over sequences or micro-batches.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List

import torch

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import uses_ring_attention
from megatron_ext.model.linear_cross_entropy import gpt_output_processor
from megatron_ext.training.batch import MicroBatch, for_context_parallel_rank
from megatron_ext.training.metrics import FlopsModel, StepStats


class DeviceBatches:
    """Moves micro-batches to the device, keeps this CP rank's share, counts tokens and FLOPs."""

    def __init__(self, source: Iterator[MicroBatch], recipe: Recipe, layout, device: torch.device):
        self.source, self.layout, self.device = source, layout, device
        self.flops_model = FlopsModel.from_recipe(recipe)
        self.fp8_attention = recipe.precision.fp8_dot_product_attention
        self.ring_attention = uses_ring_attention(recipe)
        self.stats = StepStats()

    def __iter__(self):
        return self

    def __next__(self) -> MicroBatch:
        mb = next(self.source)
        if self.fp8_attention and mb.is_thd:
            raise RuntimeError("precision.fp8_dot_product_attention is on but a packed multi-document sample "
                               "arrived; FP8 attention cannot be trained on THD batches on Hopper")
        self.stats.tokens += mb.num_real_tokens
        self.stats.flops += self.flops_model.training_flops(mb.doc_lengths)
        return for_context_parallel_rank(mb.to(self.device), self.layout.cp_size, self.layout.cp_rank,
                                         self.ring_attention)


def dense_document_mask(mb: MicroBatch) -> torch.Tensor:
    """[b, 1, T, T] boolean mask, True = may not attend (Megatron's convention).

    For Megatron's local attention (CPU emulation), which has no THD support: causal inside
    each document, nothing across documents or into padding.
    """
    b, t = mb.tokens.shape
    if not mb.is_thd:
        return torch.ones(t, t, dtype=torch.bool, device=mb.tokens.device).triu(1).expand(b, 1, t, t)
    doc = torch.full((t,), -1, dtype=torch.long, device=mb.tokens.device)
    real = mb.cu_seqlens[1:] - mb.cu_seqlens[:-1]
    for i, (start, length) in enumerate(zip(mb.cu_seqlens_padded[:-1].tolist(), real.tolist())):
        doc[start:start + length] = i
    pos = torch.arange(t, device=doc.device)
    allowed = (doc[:, None] == doc[None, :]) & (doc[:, None] >= 0) & (pos[None, :] <= pos[:, None])
    return (~allowed)[None, None]


def packed_seq_params(mb: MicroBatch):
    from megatron.core.packed_seq_params import PackedSeqParams

    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=mb.cu_seqlens,
        cu_seqlens_kv=mb.cu_seqlens,
        cu_seqlens_q_padded=mb.cu_seqlens_padded,
        cu_seqlens_kv_padded=mb.cu_seqlens_padded,
        max_seqlen_q=mb.max_seqlen,
        max_seqlen_kv=mb.max_seqlen,
    )


def loss_func(mb: MicroBatch, num_domains: int, token_losses: torch.Tensor):
    weight = mb.loss_weight
    weighted = token_losses.float() * weight
    loss_sum = weighted.sum()
    num_tokens = weight.sum()
    by_domain = torch.zeros(2, num_domains, dtype=torch.float32, device=weight.device)
    domains = mb.domain_ids.reshape(-1)
    by_domain[0].scatter_add_(0, domains, weighted.detach().reshape(-1))
    by_domain[1].scatter_add_(0, domains, weight.reshape(-1))
    report = {"loss": torch.stack([loss_sum.detach(), num_tokens]), "domains": by_domain}
    return loss_sum, num_tokens.int(), report


def per_token_loss(model, mb: MicroBatch, use_te: bool) -> torch.Tensor:
    """The model's per-token loss [b, T] of a micro-batch: document masking through THD
    (Transformer Engine) or a dense mask (Megatron's local spec on the CPU)."""
    if use_te:
        extra = {"attention_mask": None, "packed_seq_params": packed_seq_params(mb) if mb.is_thd else None}
    else:
        extra = {"attention_mask": dense_document_mask(mb)}
    return model(mb.tokens, mb.position_ids, labels=mb.labels, output_processor=gpt_output_processor, **extra)


def make_forward_step(use_te: bool, num_domains: int):
    """Megatron ``forward_step_func``: the data iterator yields device-ready MicroBatches."""

    def forward_step(data_iterator: Iterator[MicroBatch], model):
        mb = next(data_iterator)
        return per_token_loss(model, mb, use_te), partial(loss_func, mb, num_domains)

    return forward_step


def reduce_reports(reports: List[Dict[str, torch.Tensor]], group) -> Dict[str, torch.Tensor]:
    """Sum the micro-batch reports of this rank, then over the data-parallel(+CP) group."""
    totals = {key: torch.stack([r[key] for r in reports]).sum(0) for key in reports[0]}
    if group is not None and torch.distributed.get_world_size(group) > 1:
        for value in totals.values():
            torch.distributed.all_reduce(value, group=group)
    return totals
