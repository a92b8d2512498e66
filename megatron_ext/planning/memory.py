"""Peak memory of one GPU (what torch.cuda.max_memory_allocated reports), term by term.

Model state: bf16 weights and fp32 gradients on every rank of a tensor-parallel group; fp32
master weights and Adam moments (12 bytes/parameter) sharded over data x context parallel by
the distributed optimizer, partly in host memory with optimizer offload. Activations: the
recompute setting's checkpoints and stored layers (shape.py), minus what is offloaded, plus
context-parallel communication buffers, the chunked output layer and loss
(model/linear_cross_entropy.py), and a fixed remainder.
"""

from __future__ import annotations

from typing import List

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import padded_vocab_size
from megatron_ext.planning.shape import BF16, Recompute, layer_bytes, micro_batch_tokens, parameters_per_gpu
from megatron_ext.planning.terms import GIB, Term


def optimizer_offload_fraction(recipe: Recipe) -> float:
    o = recipe.optimizer
    return o.optimizer_offload_fraction if o.optimizer_cpu_offload else 0.0


def offloaded_activation_bytes(recipe: Recipe) -> float:
    """Activation bytes of one micro-batch that wait in host memory (one layer stays in flight)."""
    p = recipe.parallel
    per_layer = layer_bytes(recipe)
    if p.cpu_offloading:
        return max(p.cpu_offloading_num_layers - 1, 0) * per_layer.total
    if p.fine_grained_activation_offloading:
        inputs = per_layer.module_inputs()
        return max(Recompute.of(recipe).stored_layers - 1, 0) * sum(inputs[name] for name in p.offload_modules)
    return 0.0


def output_layer_bytes(recipe: Recipe) -> float:
    """Gathered hidden states and their gradient, one chunk of logits (fp32, bf16 product,
    bf16 probabilities), per-token loss statistics, and the fp32 weight gradient."""
    from megatron_ext.model.linear_cross_entropy import chunk_tokens  # imports torch: not at --help time

    tp, h = recipe.parallel.tensor_model_parallel_size, recipe.model.hidden_size
    vocab = padded_vocab_size(recipe) / tp
    tokens = micro_batch_tokens(recipe)
    chunk = min(chunk_tokens(int(vocab)), tokens)
    return 2 * tokens * h * BF16 + chunk * vocab * (4 + 2 + 2) + tokens * 16 + vocab * h * (4 + BF16)


def memory_terms(recipe: Recipe, world_size: int) -> List[Term]:
    p, m = recipe.parallel, recipe.model
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    dp_cp = world_size // tp  # the distributed optimizer shards over data x context parallel
    params, gemm_weights = parameters_per_gpu(recipe)
    dtype_bytes = BF16 if recipe.precision.bf16 else 4
    offload = optimizer_offload_fraction(recipe)
    per_layer = layer_bytes(recipe)
    rc = Recompute.of(recipe)
    rerun = per_layer.recomputed_by(rc.modules)
    stored = rc.stored_layers * per_layer.total - rc.selective_layers * rerun - offloaded_activation_bytes(recipe)
    # Selective: one layer's re-run is live at a time, on top of every stored layer only when the
    # last layer recomputes; with the first N only, backward has freed the layers above by then.
    live_rerun = rerun if rc.selective_layers == rc.stored_layers else 0.0
    # CP exchange buffers in units of this rank's hidden-size activations; all_gather holds
    # the whole sequence's keys and values, so its buffers grow with CP.
    hidden = micro_batch_tokens(recipe) * m.hidden_size * BF16 / tp * (cp if p.cp_comm_type == "all_gather" else 1)
    return [
        Term("weights", params * dtype_bytes),
        Term("gradients (fp32)", params * 4),
        Term("optimizer (fp32 master + Adam)", 12 * params * (1 - offload) / dp_cp),
        Term("FP8 weight copies", gemm_weights if recipe.precision.fp8 else 0.0, "fp8_bytes_per_weight"),
        Term("checkpointed layer inputs", rc.checkpoints * per_layer.hidden),
        # Two constants for the same tensors: the measured runs so far recompute every layer, so
        # they pin down what one recomputed layer holds, not yet what stored layers add up to.
        Term("activations of recomputed layers", rc.live_layers * per_layer.total + live_rerun, "activation_scale"),
        Term("activations of stored layers", stored, "stored_activation_scale"),
        Term(f"CP {p.cp_comm_type} buffers", hidden if cp > 1 else 0.0, f"cp_{p.cp_comm_type}_buffers"),
        Term("output layer + loss", output_layer_bytes(recipe)),
        Term("fixed", GIB, "fixed_gib"),
    ]
