"""Chunked, vocabulary-parallel linear + cross-entropy that never materializes full logits.

At 64K tokens x 128K vocabulary the logits take 16 GiB in bf16 and Megatron's fused
cross-entropy upcasts them to fp32 (31 GiB more) and keeps the softmax for backward.
Here the output projection and the loss are computed together, a chunk of tokens at a
time: forward keeps only the per-token log-sum-exp, backward recomputes each chunk's
logits (one extra output GEMM, ~2% of a Llama-3-8B step at 64K) and accumulates the
weight gradient in fp32. Plugged into GPTModel through its ``output_processor`` hook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# Tokens per chunk are chosen so that one fp32 chunk of logits is about this large.
_CHUNK_BYTES = 1 << 30


def chunk_tokens(vocab_local: int) -> int:
    """Tokens per chunk: each chunk's fp32 logits take at most _CHUNK_BYTES (the planner counts them too)."""
    return max(256, _CHUNK_BYTES // (4 * vocab_local))


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in fp32, without upcasting bf16 inputs on the GPU."""
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, tp_group):
        # hidden [N, H] (all tokens of this TP rank's sequence), weight [V_local, H], labels [N].
        n, vocab_local = hidden.shape[0], weight.shape[0]
        vocab_start = dist.get_rank(tp_group) * vocab_local if tp_group is not None else 0
        local_labels = labels - vocab_start
        owned = (local_labels >= 0) & (local_labels < vocab_local)
        local_labels = torch.where(owned, local_labels, torch.zeros_like(local_labels))
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        target_logit = torch.empty(n, dtype=torch.float32, device=hidden.device)
        step = chunk_tokens(vocab_local)
        for s in range(0, n, step):
            e = min(s + step, n)
            logits = (hidden[s:e] @ weight.t()).float()
            chunk_max = logits.max(dim=-1).values
            if tp_group is not None and tp_group.size() > 1:
                dist.all_reduce(chunk_max, op=dist.ReduceOp.MAX, group=tp_group)
            picked = logits.gather(1, local_labels[s:e, None]).squeeze(1) * owned[s:e]
            sum_exp = (logits - chunk_max[:, None]).exp_().sum(dim=-1)
            both = torch.stack([sum_exp, picked])
            if tp_group is not None and tp_group.size() > 1:
                dist.all_reduce(both, group=tp_group)
            lse[s:e] = chunk_max + both[0].log()
            target_logit[s:e] = both[1]
        ctx.save_for_backward(hidden, weight, local_labels, owned, lse)
        return lse - target_logit

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, local_labels, owned, lse = ctx.saved_tensors
        n, vocab_local = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        step = chunk_tokens(vocab_local)
        rows = torch.arange(min(step, n), device=hidden.device)
        for s in range(0, n, step):
            e = min(s + step, n)
            # d loss / d logits = softmax - onehot(target), scaled by the incoming gradient.
            probs = (hidden[s:e] @ weight.t()).float().sub_(lse[s:e, None]).exp_()
            probs[rows[: e - s], local_labels[s:e]] -= owned[s:e].float()
            probs.mul_(grad_loss[s:e, None])
            probs = probs.to(hidden.dtype)
            grad_hidden[s:e] = probs @ weight
            grad_weight += _mm_fp32(probs.t(), hidden[s:e])
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Per-token cross-entropy of ``hidden @ weight.T`` against ``labels`` (fp32, [N]).

    ``weight`` is this rank's vocabulary shard; ``hidden`` must already be complete along
    the sequence and have a gradient path that sums over the tensor-parallel group.
    """
    return _LinearCrossEntropy.apply(hidden, weight, labels, tp_group)


def gpt_output_processor(*, hidden_states, output_layer, output_weight, labels, config, **_):
    """GPTModel ``output_processor``: per-token loss [b, s] instead of logits."""
    from megatron.core.tensor_parallel.mappings import (
        copy_to_tensor_model_parallel_region,
        gather_from_sequence_parallel_region,
    )

    weight = output_weight if output_weight is not None else output_layer.weight
    tp_group = output_layer.tp_group
    if config.sequence_parallel:
        hidden_states = gather_from_sequence_parallel_region(hidden_states, group=tp_group)
    else:
        hidden_states = copy_to_tensor_model_parallel_region(hidden_states, group=tp_group)
    s, b, h = hidden_states.shape
    loss = linear_cross_entropy(hidden_states.reshape(s * b, h), weight, labels.t().reshape(-1), tp_group)
    return loss.view(s, b).t()
