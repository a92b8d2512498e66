"""Llama-family decoder as a Megatron-Core GPTModel.

GPU: the Transformer Engine layer spec (fused attention with THD/cu_seqlens, context
parallelism, FP8). CPU emulation: Megatron-Core's local spec, whose distributed checkpoint
keys are mapped to the TE names, so checkpoints move freely between the two.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from megatron_ext.config.schema import Recipe
from megatron_ext.config.userbuffers import read_userbuffer_settings
from megatron_ext.config.validate import head_dim, padded_vocab_size


def transformer_config(recipe: Recipe):
    from megatron.core.transformer import TransformerConfig

    m, p, pr = recipe.model, recipe.parallel, recipe.precision
    on_gpu = recipe.train.device == "cuda"
    dtype = torch.bfloat16 if pr.bf16 else torch.float32
    tp = p.tensor_model_parallel_size
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=head_dim(recipe),
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=tp,
        context_parallel_size=p.context_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel and tp > 1,
        cp_comm_type=p.cp_comm_type,
        hierarchical_context_parallel_sizes=p.hierarchical_context_parallel_sizes,
        recompute_granularity=p.recompute_granularity,
        recompute_method=p.recompute_method,
        recompute_num_layers=p.recompute_num_layers,
        recompute_modules=p.recompute_modules,
        cpu_offloading=p.cpu_offloading,
        cpu_offloading_num_layers=p.cpu_offloading_num_layers,
        fine_grained_activation_offloading=p.fine_grained_activation_offloading,
        offload_modules=list(p.offload_modules),
        tp_comm_overlap=p.tp_comm_overlap,
        bf16=pr.bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        fp8=pr.fp8,
        fp8_recipe=pr.fp8_recipe if pr.fp8 else None,
        fp8_amax_history_len=pr.fp8_amax_history_len,
        fp8_amax_compute_algo=pr.fp8_amax_compute_algo,
        fp8_dot_product_attention=pr.fp8_dot_product_attention,
        # Token-averaged loss over the global batch: finalize_model_grads divides the
        # gradients by the number of loss tokens summed over DP x CP.
        calculate_per_token_loss=True,
        bias_activation_fusion=on_gpu,
        apply_rope_fusion=on_gpu and m.apply_rope_fusion,
        masked_softmax_fusion=False,
        # Needs APEX's fused_weight_gradient_mlp_cuda for Megatron's own output layer (not
        # on the package registry); TE layers then add wgrad to main_grad through DDP hooks.
        gradient_accumulation_fusion=False,
        use_cpu_initialization=not on_gpu,
    )


# TE 2.20's own limit (dot_product_attention/utils.py): with determinism requested, cuDNN's
# bf16 THD backward on sm90 is refused at batch x heads x seq^2 >= 2^30 (its workspace
# would not fit), and FP8 attention backward below cuDNN 9.19.
_SM90_DETERMINISTIC_THD_MAX_BHSS = 1 << 30


def check_deterministic_attention(recipe: Recipe) -> None:
    """Refuse, with the reason, what TE would reject deep inside its first attention call
    ("No dot product attention backend is available") when NVTE_ALLOW_NONDETERMINISTIC_ALGO=0."""
    if os.environ.get("NVTE_ALLOW_NONDETERMINISTIC_ALGO") != "0" or torch.cuda.get_device_capability() != (9, 0):
        return
    p, t = recipe.parallel, recipe.train
    hint = "; unset NVTE_ALLOW_NONDETERMINISTIC_ALGO (bit-exact reruns need it only for short sequences)"
    if recipe.precision.fp8_dot_product_attention and torch.backends.cudnn.version() < 91900:
        raise RuntimeError("precision.fp8_dot_product_attention: deterministic FP8 attention backward needs "
                           f"cuDNN >= 9.19 (found {torch.backends.cudnn.version()})" + hint)
    heads = recipe.model.num_attention_heads // p.tensor_model_parallel_size
    local_seq = t.seq_length // p.context_parallel_size
    if t.reset_attention_mask and heads * local_seq**2 >= _SM90_DETERMINISTIC_THD_MAX_BHSS:
        raise RuntimeError(f"train.seq_length={t.seq_length}: deterministic document-masked (THD) attention "
                           f"on Hopper is limited to heads x local_seq^2 < 2^30 (here {heads} x {local_seq}^2)" + hint)


def initialize_tp_comm_overlap(recipe: Recipe) -> None:
    """Transformer Engine's userbuffers for parallel.tp_comm_overlap, before any TE layer exists.

    One buffer per TP group holds a micro-batch's tokens x hidden: a packed THD micro-batch at
    CP=1 is always micro_batch_size x seq_length tokens (validation refuses CP > 1). The
    bootstrap runs over torch.distributed (NCCL), so no MPI is needed (TE >= 1.9)."""
    from transformer_engine.pytorch import module as te_module

    t, p, fp8 = recipe.train, recipe.parallel, recipe.precision.fp8 is not None
    mode = te_module.base.UserBufferQuantizationMode
    te_module.base.initialize_ub(
        shape=[t.seq_length * t.micro_batch_size, recipe.model.hidden_size],
        tp_size=p.tensor_model_parallel_size,
        quantization_modes=[mode.FP8 if fp8 else mode.NONE],
        ub_cfgs=read_userbuffer_settings(p.tp_comm_overlap_cfg, fp8) if p.tp_comm_overlap_cfg else None,  # None: TE's
        bootstrap_backend="nccl",
    )


def build_gpt_model(recipe: Recipe, config=None):
    """An unwrapped GPTModel on the current device (CPU with use_cpu_initialization)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    m = recipe.model
    config = config or transformer_config(recipe)
    if recipe.train.device == "cuda":
        check_deterministic_attention(recipe)
        if recipe.parallel.tp_comm_overlap:
            initialize_tp_comm_overlap(recipe)
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(recipe),
        max_sequence_length=m.max_position_embeddings,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=not m.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=float(m.rotary_base),
        rope_scaling=m.use_rope_scaling,
        rope_scaling_factor=m.rope_scaling_factor,
    )
    limit_selective_recompute(model, recipe.parallel.selective_recompute_num_layers)
    return model


def limit_selective_recompute(model, num_layers) -> None:
    """parallel.selective_recompute_num_layers: the first ``num_layers`` layers keep recomputing
    their selected modules, the others store their activations. Megatron-Core decides this per
    layer when it builds the layer (recompute_mlp, checkpoint_core_attention) but from one
    config for all; turning it off afterwards is all its forward consults."""
    if num_layers is None:
        return
    for layer in model.decoder.layers[num_layers:]:
        layer.recompute_mlp = False
        layer.self_attention.checkpoint_core_attention = False
