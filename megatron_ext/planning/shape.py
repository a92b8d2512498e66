"""Exact counts from the recipe: parameters per GPU, what a layer keeps for backward, and
which layers a recompute setting runs twice.

Saved activations of one Llama layer with Transformer Engine's layers (bf16, per token): the
layer input and the MLP input (the RMSNorms' inputs, h each), both RMSNorm outputs (h each),
q/k/v after RoPE (q + 2 kv), the attention output (q, shared with the output projection),
the fc1 output (2 x ffn, SwiGLU's input) and SwiGLU's output (ffn, fc2's input). Hidden-size
tensors are split over TP only with sequence parallelism; the others always are. What TE
really keeps differs by a factor that ``activation_scale`` calibrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import head_dim, layer_gemm_weights, padded_vocab_size

BF16 = 2


def parameters_per_gpu(recipe: Recipe, tp: Optional[int] = None) -> Tuple[float, float]:
    """(all parameters, GEMM weights of the layers) held by one tensor-parallel rank of the
    recipe's TP, or of ``tp`` (1: the whole model)."""
    m, tp = recipe.model, tp or recipe.parallel.tensor_model_parallel_size
    gemm = m.num_layers * layer_gemm_weights(recipe) / tp
    vocab = padded_vocab_size(recipe) * m.hidden_size * (2 if m.untie_embeddings_and_output_weights else 1) / tp
    norms = (2 * m.num_layers + 1) * m.hidden_size
    return gemm + vocab + norms, gemm


@dataclass(frozen=True)
class LayerBytes:
    """Bytes one layer keeps for backward on one GPU for one micro-batch, by part."""

    hidden: float         # one hidden-size tensor: the layer input, which is all a checkpoint keeps
    qkv: float            # q, k, v after RoPE
    attention_out: float  # also linear_proj's input
    mlp_inner: float      # fc1 output (SwiGLU's input) + SwiGLU output (fc2's input)

    @property
    def total(self) -> float:
        # + the MLP input and the two RMSNorm outputs, hidden-sized each
        return 4 * self.hidden + self.qkv + self.attention_out + self.mlp_inner

    def recomputed_by(self, modules) -> float:
        """What selective recompute of these modules stops keeping. The mlp module starts at
        its fused RMSNorm: its input stays (the checkpoint's input), the rest goes. core_attn
        saves next to nothing: its inputs are the checkpoint's, its output is linear_proj's input."""
        return self.hidden + self.mlp_inner if "mlp" in modules else 0.0

    def module_inputs(self) -> Dict[str, float]:
        """The input of each submodule fine-grained activation offloading can move to the host."""
        return {"qkv_linear": self.hidden, "core_attn": self.qkv, "attn_proj": self.attention_out}


def micro_batch_tokens(recipe: Recipe) -> float:
    """Tokens of one micro-batch on one context-parallel rank (CP padding ignored: < 0.3%)."""
    t = recipe.train
    return t.micro_batch_size * t.seq_length / recipe.parallel.context_parallel_size


def layer_bytes(recipe: Recipe) -> LayerBytes:
    m, p = recipe.model, recipe.parallel
    tp = p.tensor_model_parallel_size
    sp = tp if p.sequence_parallel and tp > 1 else 1
    q, kv, h = m.num_attention_heads * head_dim(recipe), m.num_query_groups * head_dim(recipe), m.hidden_size
    tok = micro_batch_tokens(recipe) * BF16
    return LayerBytes(hidden=tok * h / sp, qkv=tok * (q + 2 * kv) / tp, attention_out=tok * q / tp,
                      mlp_inner=tok * 3 * m.ffn_hidden_size / tp)


@dataclass(frozen=True)
class Recompute:
    """Which layers run their forward twice, and what that leaves in memory."""

    checkpoints: int          # layer(-chunk) inputs kept instead of activations
    stored_layers: int        # layers that keep all their activations
    live_layers: int          # layers recomputed at once in backward (their activations transient)
    rerun_layers: int         # layers whose whole forward (GEMMs + attention) runs twice
    modules: Tuple[str, ...]  # selective: submodules whose forward runs twice ...
    selective_layers: int = 0  # ... in this many layers (the others keep their activations)

    @classmethod
    def of(cls, recipe: Recipe) -> "Recompute":
        p, layers = recipe.parallel, recipe.model.num_layers
        if p.recompute_granularity == "full" and p.recompute_method == "uniform":
            n = p.recompute_num_layers
            return cls(math.ceil(layers / n), 0, n, layers, ())
        if p.recompute_granularity == "full":  # block: the first n layers, one at a time
            n = p.recompute_num_layers
            return cls(n, layers - n, 1, n, ())
        if p.recompute_granularity == "selective":
            return cls(0, layers, 0, 0, tuple(p.recompute_modules or ("core_attn",)),
                       p.selective_recompute_num_layers or layers)
        return cls(0, layers, 0, 0, ())

    def describe(self, recipe: Recipe) -> str:
        p = recipe.parallel
        if p.recompute_granularity == "full":
            return f"full {p.recompute_method} {p.recompute_num_layers}"
        if p.recompute_granularity == "selective":
            some = f" in {self.selective_layers} of {recipe.model.num_layers} layers" if p.selective_recompute_num_layers else ""
            return "selective " + "+".join(self.modules) + some
        return "none"
