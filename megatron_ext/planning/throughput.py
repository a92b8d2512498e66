"""Time of one iteration on the slowest GPU, term by term, and tokens/s/GPU.

Compute: hardware FLOPs (model FLOPs from ``FlopsModel`` plus what recompute runs again, plus
the output GEMM the chunked loss recomputes) over the dense bf16 peak, times an inverse
efficiency per kind (the layers' GEMMs bf16 or FP8, the output layer's bf16, attention).
Attention is counted on the slowest data-parallel rank's documents (``workload.rank_work``).
Communication: bytes each GPU moves (tensor-parallel all-gathers/reduce-scatters,
context-parallel exchanges, data-parallel gradient reduce-scatter and parameter all-gather, host
transfers of offloading) times seconds per GB actually exposed. Plus the optimizer step and a fixed cost per micro-batch.
"""

from __future__ import annotations

from typing import List

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import head_dim, layer_gemm_weights, padded_vocab_size
from megatron_ext.planning.memory import offloaded_activation_bytes, optimizer_offload_fraction
from megatron_ext.planning.shape import BF16, Recompute, micro_batch_tokens, parameters_per_gpu
from megatron_ext.planning.terms import Term
from megatron_ext.planning.workload import RankWork
from megatron_ext.training.metrics import FlopsModel

GB = 1e9
RECOMPUTE_GEMMS, RECOMPUTE_ATTENTION = "GEMMs (recompute)", "attention (recompute)"
OUTPUT_GEMMS = "output layer GEMMs"
# TP collectives of one layer with sequence parallelism: forward all-gathers before the qkv
# and fc1 GEMMs and reduce-scatters after proj and fc2; backward their duals plus the two
# all-gathers TE repeats for the weight gradients.
TP_COLLECTIVES_PER_LAYER = 10
# Optimizer step, bytes per parameter of the local shard: read and write fp32 master, m, v;
# read the fp32 gradient; write the bf16 weight.
OPTIMIZER_BYTES_PER_PARAM = 3 * 4 * 2 + 4 + 2


def _cp_bytes(recipe: Recipe, passes: float, micro_batches: int) -> List[Term]:
    """Bytes one GPU sends for context parallelism in one iteration, per attention pass."""
    p, m = recipe.parallel, recipe.model
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    if cp == 1:
        return []
    q, kv = m.num_attention_heads * head_dim(recipe), m.num_query_groups * head_dim(recipe)
    tok = micro_batch_tokens(recipe) * micro_batches * m.num_layers * passes * BF16 / tp

    def a2a(size):   # q, k, v to head-split and the output back (gradients alike)
        return tok * (2 * q + 2 * kv) * (size - 1) / size

    def ring(size):  # each step passes k, v on: size - 1 steps; backward also dk, dv
        return tok * 2 * kv * (size - 1) * 1.5

    if p.cp_comm_type == "a2a":
        return [Term("CP a2a", a2a(cp) / GB, "cp_a2a_s_per_gb")]
    if p.cp_comm_type == "p2p":
        return [Term("CP p2p", ring(cp) / GB, "cp_p2p_s_per_gb")]
    if p.cp_comm_type == "all_gather":
        return [Term("CP all_gather", tok * 2 * kv * (cp - 1) / GB, "cp_all_gather_s_per_gb")]
    a2a_size, ring_size = p.hierarchical_context_parallel_sizes
    return [Term("CP a2a (a2a+p2p)", a2a(a2a_size) / GB, "cp_a2a_s_per_gb"),
            Term("CP p2p (a2a+p2p)", ring(ring_size) / GB, "cp_p2p_s_per_gb")]


def time_terms(recipe: Recipe, world_size: int, work: RankWork, peak_tflops: float) -> List[Term]:
    p, m, pr = recipe.parallel, recipe.model, recipe.precision
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    dp_cp = world_size // tp
    layers, h = m.num_layers, m.hidden_size
    output_fwd = 2 * h * padded_vocab_size(recipe)
    layer_fwd = 2 * layer_gemm_weights(recipe)
    mlp_fwd = 2 * 3 * h * m.ffn_hidden_size
    attention_fwd = FlopsModel.from_recipe(recipe).attention_per_pair / layers
    rc = Recompute.of(recipe)
    rerun_gemm = rc.rerun_layers * layer_fwd + (rc.selective_layers * mlp_fwd if "mlp" in rc.modules else 0.0)
    rerun_attention = rc.rerun_layers + (rc.selective_layers if "core_attn" in rc.modules else 0)
    per_gpu = work.tokens / (tp * cp)
    pairs_per_gpu = work.pairs / (tp * cp)
    peak = peak_tflops * 1e12
    gemm_constant = "gemm_fp8" if pr.fp8 else "gemm_bf16"
    attention_constant = "attention_fp8" if pr.fp8_dot_product_attention else "attention_bf16"
    # Forward, backward (2x the forward's FLOPs, its own efficiency) and recompute apart, as a
    # profile separates them (profiling.py).
    terms = [
        Term("GEMMs", per_gpu * 3 * layers * layer_fwd / peak, gemm_constant),
        # The output layer's GEMMs are ours (linear_cross_entropy: torch matmuls on its weight,
        # forward, backward and the loss's recompute), not Transformer Engine's: bf16 under FP8.
        Term(OUTPUT_GEMMS, per_gpu * 4 * output_fwd / peak, "gemm_bf16"),
        Term("attention", pairs_per_gpu * attention_fwd * layers / peak, attention_constant),
        Term("attention backward", pairs_per_gpu * attention_fwd * 2 * layers / peak, attention_constant + "_backward"),
        Term(RECOMPUTE_GEMMS, per_gpu * rerun_gemm / peak, gemm_constant),
        Term(RECOMPUTE_ATTENTION, pairs_per_gpu * attention_fwd * rerun_attention / peak, attention_constant),
    ]
    tokens = micro_batch_tokens(recipe) * work.micro_batches
    if tp > 1:
        rerun_collectives = 4 * rc.rerun_layers + (2 * rc.selective_layers if "mlp" in rc.modules else 0)
        collectives = TP_COLLECTIVES_PER_LAYER * layers + rerun_collectives + 2  # + output layer
        moved = collectives * tokens * h * BF16 * (tp - 1) / tp
        terms.append(Term("TP communication", moved / GB, "tp_overlap_s_per_gb" if p.tp_comm_overlap else "tp_s_per_gb"))
    attention_passes = 2 + rerun_attention / layers
    terms += _cp_bytes(recipe, attention_passes, work.micro_batches)
    params, _ = parameters_per_gpu(recipe)
    if dp_cp > 1:
        share = (dp_cp - 1) / dp_cp
        terms.append(Term("DP gradient reduce-scatter", params * 4 * share / GB,
                          "dp_overlap_s_per_gb" if p.overlap_grad_reduce else "dp_s_per_gb"))
        terms.append(Term("DP parameter all-gather", params * BF16 * share / GB,
                          "dp_overlap_s_per_gb" if p.overlap_param_gather else "dp_s_per_gb"))
    shard = params / dp_cp
    offload = optimizer_offload_fraction(recipe)
    terms += [
        Term("optimizer step (GPU)", shard * (1 - offload) * OPTIMIZER_BYTES_PER_PARAM / GB, "hbm_s_per_gb"),
        Term("optimizer step (CPU)", shard * offload / GB, "cpu_adam_s_per_gparam"),
        Term("optimizer host transfers", shard * offload * (4 + BF16) / GB, "pcie_s_per_gb"),
        Term("activation offload transfers", 2 * offloaded_activation_bytes(recipe) * work.micro_batches / GB,
             "activation_offload_s_per_gb"),
        Term("per micro-batch overhead", work.micro_batches, "microbatch_s"),
    ]
    return terms

