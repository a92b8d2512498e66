"""Value and cross-field checks. Each problem names its key(s) and says why.

Everything that would otherwise fail deep inside Megatron-Core or Transformer Engine
(or, worse, silently fall back to something else, loop or train wrong) is refused here,
before any GPU work. First every field against the range or choices schema.py declares
for it (bounds.py), then, once every value is in range, the combinations of fields.
"""

from __future__ import annotations

import math
from typing import List, Optional

from megatron_ext.config.bounds import field_problems
from megatron_ext.config.errors import RecipeError
from megatron_ext.config.schema import Recipe
from megatron_ext.config.userbuffers import read_userbuffer_settings

P2P_COMM_TYPES = ("p2p", "a2a+p2p")
# Samples a stage may draw (train_iters x global_batch_size): the data index holds a few
# bytes per sample up front, so an absurd product would exhaust memory before step 1.
MAX_SAMPLES = 2**32


def padded_vocab_size(recipe: Recipe) -> int:
    m = recipe.model
    return int(math.ceil(m.vocab_size / m.make_vocab_size_divisible_by)) * m.make_vocab_size_divisible_by


def head_dim(recipe: Recipe) -> int:
    m = recipe.model
    return m.kv_channels or m.hidden_size // m.num_attention_heads


def layer_gemm_weights(recipe: Recipe) -> int:
    """GEMM weights of one transformer layer of the whole model (no TP split): qkv, the
    attention output projection, and the SwiGLU MLP's fc1 (2 x ffn) and fc2."""
    m = recipe.model
    q, kv, h = m.num_attention_heads * head_dim(recipe), m.num_query_groups * head_dim(recipe), m.hidden_size
    return h * (q + 2 * kv) + q * h + 3 * h * m.ffn_hidden_size


def cp_padding_multiple(recipe: Recipe) -> int:
    """Every document is padded to a multiple of this (TE's per-document CP split)."""
    cp = recipe.parallel.context_parallel_size
    return 2 * cp if cp > 1 else 1


def uses_ring_attention(recipe: Recipe) -> bool:
    """Ring (p2p) context parallelism, alone or inside a2a+p2p: its THD batches must count
    each document's padding as document tokens (training.batch.padding_joins_documents)."""
    p = recipe.parallel
    return p.context_parallel_size > 1 and p.cp_comm_type in P2P_COMM_TYPES


# Transformer Engine's FP8 GEMMs take a multiple of 8 rows (tokens) and, transposed for the weight
# gradient, of 16 columns: every rank's share of a micro-batch must be a multiple of 16 tokens.
FP8_TOKENS_PER_RANK_MULTIPLE = 16


def _sequence_parallel_size(recipe: Recipe) -> int:
    p = recipe.parallel
    return p.tensor_model_parallel_size if (p.sequence_parallel and p.tensor_model_parallel_size > 1) else 1


def _ranks_sharing_a_sample(recipe: Recipe) -> int:
    return recipe.parallel.context_parallel_size * _sequence_parallel_size(recipe)


def sequence_multiple(recipe: Recipe) -> int:
    """A packed micro-batch's token count must be a multiple of this: whole CP chunks (2 x CP)
    and sequence-parallel shares, and under FP8 a multiple of 16 tokens on every rank."""
    multiple = cp_padding_multiple(recipe) * _sequence_parallel_size(recipe)
    if recipe.precision.fp8 is not None:
        multiple = math.lcm(multiple, FP8_TOKENS_PER_RANK_MULTIPLE * _ranks_sharing_a_sample(recipe))
    return multiple


def _sequence_multiple_reasons(recipe: Recipe) -> str:
    shares = [name for name, applies in (("2 x context_parallel_size", recipe.parallel.context_parallel_size > 1),
                                         ("tensor_model_parallel_size (sequence parallel)",
                                          _sequence_parallel_size(recipe) > 1)) if applies]
    reasons = [" x ".join(shares)] if shares else []
    if recipe.precision.fp8 is not None:
        reasons.append(f"FP8 GEMMs: {FP8_TOKENS_PER_RANK_MULTIPLE} tokens per rank x "
                       f"{_ranks_sharing_a_sample(recipe)} ranks sharing a sample")
    return "; ".join(reasons)


def decay_iters(recipe: Recipe) -> int:
    return recipe.scheduler.lr_decay_iters or recipe.train.train_iters


def warmup_iters(recipe: Recipe) -> int:
    s = recipe.scheduler
    if s.lr_warmup_fraction is not None:
        return int(math.ceil(s.lr_warmup_fraction * decay_iters(recipe)))
    return s.lr_warmup_iters


def data_parallel_size(recipe: Recipe, world_size: int) -> int:
    p = recipe.parallel
    return world_size // (p.tensor_model_parallel_size * p.context_parallel_size * p.pipeline_model_parallel_size)


def _check_model(r: Recipe, problems: List[str]) -> None:
    m = r.model
    if m.num_attention_heads % m.num_query_groups:
        problems.append(
            f"model.num_query_groups: {m.num_attention_heads} attention heads are not divisible "
            f"into {m.num_query_groups} key/value groups")
    if m.kv_channels is None and m.hidden_size % m.num_attention_heads:
        problems.append(
            f"model.kv_channels: hidden_size {m.hidden_size} is not divisible by "
            f"num_attention_heads {m.num_attention_heads}; set the head dimension explicitly")
    if m.use_rope_scaling and m.rope_scaling_factor <= 1:
        problems.append(f"model.rope_scaling_factor: must be > 1 with use_rope_scaling, got {m.rope_scaling_factor}")
    if r.train.seq_length > m.max_position_embeddings:
        problems.append(
            f"train.seq_length: {r.train.seq_length} exceeds model.max_position_embeddings "
            f"{m.max_position_embeddings}; set model.max_position_embeddings to the context length "
            f"you train for (the HF export records it)")


def _check_parallel(r: Recipe, problems: List[str], world_size: Optional[int]) -> None:
    p, m = r.parallel, r.model
    tp, cp, pp = p.tensor_model_parallel_size, p.context_parallel_size, p.pipeline_model_parallel_size
    if m.num_attention_heads % tp:
        problems.append(f"parallel.tensor_model_parallel_size: {m.num_attention_heads} attention heads "
                        f"(model.num_attention_heads) are not divisible by TP={tp}")
    if m.num_query_groups % tp:
        problems.append(f"parallel.tensor_model_parallel_size: {m.num_query_groups} key/value groups "
                        f"(model.num_query_groups) are not divisible by TP={tp}")
    if m.ffn_hidden_size % tp:
        problems.append(f"parallel.tensor_model_parallel_size: model.ffn_hidden_size "
                        f"{m.ffn_hidden_size} is not divisible by TP={tp}")
    if padded_vocab_size(r) % tp:
        problems.append(f"model.make_vocab_size_divisible_by: padded vocabulary {padded_vocab_size(r)} "
                        f"is not divisible by TP={tp}; use a multiple of {tp}")
    if cp > 1 and p.cp_comm_type in ("a2a", "a2a+p2p"):
        a2a = cp if p.cp_comm_type == "a2a" else (p.hierarchical_context_parallel_sizes or [cp])[0]
        for heads, key in ((m.num_attention_heads, "num_attention_heads"), (m.num_query_groups, "num_query_groups")):
            if (heads // tp) % a2a:
                problems.append(
                    f"parallel.cp_comm_type: {p.cp_comm_type} scatters heads across the a2a group, but "
                    f"model.{key}/TP = {heads}/{tp} = {heads // tp} heads per TP rank are not "
                    f"divisible by the a2a size {a2a}")
    if p.cp_comm_type == "a2a+p2p" and cp > 1:
        h = p.hierarchical_context_parallel_sizes
        if not h or len(h) != 2 or h[0] * h[1] != cp:
            problems.append(f"parallel.hierarchical_context_parallel_sizes: a2a+p2p needs [a2a, p2p] "
                            f"with a2a * p2p = context_parallel_size {cp}, got {h}")
    seq_mult = sequence_multiple(r)
    if r.train.seq_length % seq_mult:
        problems.append(
            f"train.seq_length: {r.train.seq_length} is not a multiple of {seq_mult} "
            f"({_sequence_multiple_reasons(r)}); single-document samples would need padding")
    if p.recompute_granularity == "full":
        if p.recompute_method is None:
            problems.append("parallel.recompute_method: full recompute needs 'uniform' or 'block'")
        if p.recompute_num_layers is None or p.recompute_num_layers > m.num_layers:
            problems.append(f"parallel.recompute_num_layers: full recompute needs 1..{m.num_layers} "
                            f"(model.num_layers), got {p.recompute_num_layers}")
    elif p.recompute_method is not None or p.recompute_num_layers is not None:
        problems.append("parallel.recompute_method: only used with recompute_granularity=full; "
                        "remove recompute_method / recompute_num_layers")
    if world_size is not None:
        model_parallel = tp * cp * pp
        if world_size % model_parallel:
            problems.append(
                f"parallel: world size {world_size} (GPUs) is not divisible by tensor_model_parallel_size x "
                f"context_parallel_size = {tp} x {cp} = {model_parallel}")
        else:
            dp = world_size // model_parallel
            t = r.train
            if t.global_batch_size % (t.micro_batch_size * dp):
                problems.append(
                    f"train.global_batch_size: {t.global_batch_size} is not divisible by "
                    f"micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")


def _only_single_document_samples(r: Recipe) -> bool:
    d = r.data
    if d.synthetic is not None:
        return d.synthetic.single_document_fraction >= 1.0
    return bool(d.domains) and all(dom.packing == "long" for dom in d.domains)


def _check_precision(r: Recipe, problems: List[str]) -> None:
    pr = r.precision
    if pr.fp8 is not None:
        if not pr.bf16:
            problems.append("precision.fp8: FP8 training keeps master weights and non-GEMM math in bf16; set precision.bf16=true")
        if r.train.device == "cpu":
            problems.append("precision.fp8: FP8 needs a Hopper (or newer) GPU; train.device is cpu")
    if pr.fp8_dot_product_attention:
        if pr.fp8 is None:
            problems.append("precision.fp8_dot_product_attention: needs precision.fp8 set (e4m3 or hybrid)")
        elif pr.fp8_recipe != "delayed":
            problems.append("precision.fp8_dot_product_attention: Transformer Engine trains FP8 attention "
                            "on Hopper only with fp8_recipe=delayed")
        if head_dim(r) != 128:
            problems.append(f"precision.fp8_dot_product_attention: cuDNN FP8 attention needs head dim 128, "
                            f"model has {head_dim(r)}")
        if not _only_single_document_samples(r):
            problems.append(
                "precision.fp8_dot_product_attention: FP8 attention backward with packed (THD, "
                "document-masked) batches is not supported by Transformer Engine on Hopper; it is "
                "allowed only when every sample is a single document (all data.domains packing=long, "
                "or data.synthetic.single_document_fraction=1)")


def _check_multi_query_attention(r: Recipe, problems: List[str]) -> None:
    # Not verified on a GPU since; the CPU path (dense mask) has no such limit.
    if (r.model.num_query_groups == 1 and r.train.device == "cuda" and r.train.reset_attention_mask
            and not _only_single_document_samples(r)):
        problems.append(
            "model.num_query_groups: 1 (multi-query attention) with document-masked packed samples (THD) "
            "fails inside Transformer Engine 2.20 (\"The provided qkv memory layout is not supported!\"); "
            "use num_query_groups >= 2, or single-document samples (all data.domains packing=long, or "
            "data.synthetic.single_document_fraction=1), or train.reset_attention_mask=false")


# Transformer Engine's fused RoPE kernel (2.20, fused_rope.cu) takes its input's strides as they
# are and computes a row's offset as token x token stride in 32-bit integers. Megatron-Core hands
# it the keys as a view into the fused QKV output, whose token stride is the whole QKV row, so
# past 2^31 / row tokens it reads keys from wrapped addresses. Measured on an H200
# (reports/performance.md; tests/gpu/test_single_gpu.py): for the Llama-3-8B shape (row 6,144)
# exact at that limit, 349,525 tokens, wrong 8,192 past it, exact at 524,288 with RoPE in PyTorch;
# a 512K training run with the fused kernel crashed with "an illegal memory access".
_FUSED_ROPE_OFFSET_LIMIT = 2**31


def rope_fusion_tokens_limit(r: Recipe) -> int:
    """The most tokens a micro-batch may hold on one GPU with the fused RoPE kernel."""
    row = (r.model.num_attention_heads + 2 * r.model.num_query_groups) * head_dim(r)
    return _FUSED_ROPE_OFFSET_LIMIT // (row // r.parallel.tensor_model_parallel_size)


def _check_rope_fusion(r: Recipe, problems: List[str]) -> None:
    t, p = r.train, r.parallel
    if t.device != "cuda" or not r.model.apply_rope_fusion:
        return
    tokens, limit = t.micro_batch_size * t.seq_length // p.context_parallel_size, rope_fusion_tokens_limit(r)
    if tokens > limit:
        problems.append(
            f"train.seq_length: micro-batches of {tokens:,} tokens per GPU (micro_batch_size x seq_length / "
            f"context_parallel_size) are past {limit:,}, where Transformer Engine's fused RoPE kernel reads "
            "keys from wrong memory for this model (reports/performance.md); raise "
            "parallel.context_parallel_size or tensor_model_parallel_size, or set model.apply_rope_fusion=false")


def _check_train(r: Recipe, problems: List[str]) -> None:
    t, o, s = r.train, r.optimizer, r.scheduler
    if t.device == "cpu" and r.parallel.sequence_parallel and r.parallel.tensor_model_parallel_size > 1:
        problems.append("parallel.sequence_parallel: Megatron's local (CPU) layers cannot run sequence "
                        "parallelism; set parallel.sequence_parallel=false with train.device=cpu")
    if t.device == "cpu" and r.parallel.context_parallel_size > 1:
        problems.append("parallel.context_parallel_size: context parallelism needs Transformer Engine "
                        "attention on GPUs; train.device is cpu")
    if t.global_batch_size % t.micro_batch_size:
        problems.append(f"train.global_batch_size: {t.global_batch_size} is not a multiple of "
                        f"train.micro_batch_size {t.micro_batch_size}")
    if t.train_iters * t.global_batch_size > MAX_SAMPLES:
        problems.append(f"train.train_iters: {t.train_iters} x train.global_batch_size {t.global_batch_size} = "
                        f"{t.train_iters * t.global_batch_size:,} samples, more than any run draws "
                        f"(limit {MAX_SAMPLES:,})")
    if o.min_lr > o.lr:
        problems.append(f"optimizer.min_lr: must be within [0, optimizer.lr={o.lr}], got {o.min_lr}")
    if s.lr_warmup_init > o.lr:
        problems.append(f"scheduler.lr_warmup_init: warmup rises from this to optimizer.lr={o.lr}, so it "
                        f"must be within [0, {o.lr}], got {s.lr_warmup_init}")
    if s.lr_warmup_fraction is not None and s.lr_warmup_iters:
        problems.append("scheduler.lr_warmup_fraction: set either lr_warmup_fraction or lr_warmup_iters, not both")
    elif warmup_iters(r) >= decay_iters(r):
        key = "lr_warmup_fraction" if s.lr_warmup_fraction is not None else "lr_warmup_iters"
        problems.append(f"scheduler.{key}: {warmup_iters(r)} warmup iterations must be fewer than the "
                        f"{decay_iters(r)} decay iterations (scheduler.lr_decay_iters or train.train_iters)")


def _check_checkpoint_and_data(r: Recipe, problems: List[str]) -> None:
    c, d = r.checkpoint, r.data
    if c.save_interval is not None and not c.save:
        problems.append("checkpoint.save_interval: set checkpoint.save (the directory to save to)")
    if c.pretrained_load_optim and not c.pretrained_checkpoint:
        problems.append("checkpoint.pretrained_load_optim: needs checkpoint.pretrained_checkpoint")
    if (d.synthetic is None) == (not d.domains):
        problems.append("data: set exactly one of data.synthetic or data.domains")
    if d.synthetic is not None:
        sy = d.synthetic
        if sy.vocab_size is not None and sy.vocab_size > r.model.vocab_size:
            problems.append(f"data.synthetic.vocab_size: {sy.vocab_size} exceeds model.vocab_size {r.model.vocab_size}")
        # The length sampler clips to [min, max]; out of order, it would never fill a sequence.
        if not sy.doc_length_min <= sy.doc_length_median <= (sy.doc_length_max or sy.doc_length_median):
            problems.append(f"data.synthetic.doc_length_median: needs doc_length_min <= doc_length_median <= "
                            f"doc_length_max, got {sy.doc_length_min} <= {sy.doc_length_median} <= {sy.doc_length_max}")
        if sy.period > r.train.seq_length:
            problems.append(f"data.synthetic.period: {sy.period} is longer than a sequence "
                            f"(train.seq_length {r.train.seq_length})")
    for i, dom in enumerate(d.domains):
        if not dom.paths:
            problems.append(f"data.domains[{i}].paths: domain '{dom.name}' lists no dataset")
    names = [dom.name for dom in d.domains]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data.domains: name '{name}' is used by more than one domain (per-domain loss needs unique names)")
    if d.domains and abs(sum(dom.share for dom in d.domains) - 1.0) > 1e-6:
        shares = ", ".join(f"{dom.name}={dom.share}" for dom in d.domains)
        problems.append(f"data.domains: shares must sum to 1, got {sum(dom.share for dom in d.domains):.6f} ({shares})")


# Megatron-Core 0.19's submodule names that do something in our layers. It also accepts MoE,
# MLA and GatedDeltaNet names, and norm names that are no-ops here: Transformer Engine fuses
# each RMSNorm into the GEMM after it, so there is no separate norm to recompute or offload.
RECOMPUTE_MODULES = ("core_attn", "mlp")
OFFLOAD_MODULES = ("qkv_linear", "core_attn", "attn_proj")
FUSED_NORMS = ("layernorm", "attn_norm", "mlp_norm")


def _module_list_problem(key: str, modules, allowed) -> Optional[str]:
    unknown = sorted(set(modules) - set(allowed))
    if not unknown:
        return None
    why = " (Transformer Engine fuses the RMSNorms into the next GEMM)" if set(unknown) & set(FUSED_NORMS) else ""
    return f"{key}: {unknown} not among {', '.join(allowed)}{why}"


def _check_memory_and_overlap(r: Recipe, problems: List[str], for_new_runs: bool) -> None:
    """Recompute, offloading and communication-overlap knobs: what Megatron-Core would assert
    on deep inside, and what cannot run under CPU emulation (no Transformer Engine there)."""
    p, o = r.parallel, r.optimizer
    on_cpu = r.train.device == "cpu"
    no_te = "needs Transformer Engine on GPUs; train.device is cpu"
    if p.selective_recompute_num_layers is not None:
        if p.recompute_granularity != "selective":
            problems.append("parallel.selective_recompute_num_layers: only used with recompute_granularity=selective")
        elif p.selective_recompute_num_layers >= r.model.num_layers:
            problems.append(f"parallel.selective_recompute_num_layers: must be fewer than model.num_layers="
                            f"{r.model.num_layers}, got {p.selective_recompute_num_layers} (null: every layer)")
    if p.recompute_modules is not None:
        if p.recompute_granularity != "selective":
            problems.append("parallel.recompute_modules: only used with recompute_granularity=selective")
        problem = _module_list_problem("parallel.recompute_modules", p.recompute_modules, RECOMPUTE_MODULES)
        if problem:
            problems.append(problem)
    if p.cpu_offloading:
        if not 1 <= p.cpu_offloading_num_layers < r.model.num_layers:
            problems.append(f"parallel.cpu_offloading_num_layers: must be in [1, model.num_layers={r.model.num_layers}), "
                            f"got {p.cpu_offloading_num_layers}")
        if p.recompute_granularity is not None:
            problems.append("parallel.cpu_offloading: Megatron-Core cannot combine layer offloading with activation "
                            "recompute; set recompute_granularity=null or use fine_grained_activation_offloading")
        if on_cpu:
            problems.append(f"parallel.cpu_offloading: {no_te}")
    if p.fine_grained_activation_offloading:
        if not p.offload_modules:
            problems.append(f"parallel.offload_modules: list the submodules whose inputs to offload, from "
                            f"{', '.join(OFFLOAD_MODULES)}")
        problem = _module_list_problem("parallel.offload_modules", p.offload_modules, OFFLOAD_MODULES)
        if problem:
            problems.append(problem)
        if "attn_proj" in p.offload_modules and "core_attn" not in p.offload_modules:
            problems.append("parallel.offload_modules: attn_proj needs core_attn too (its input is core_attn's output)")
        if p.cpu_offloading:
            problems.append("parallel.fine_grained_activation_offloading: use either it or cpu_offloading, not both")
        if on_cpu:
            problems.append(f"parallel.fine_grained_activation_offloading: {no_te}")
    elif p.offload_modules:
        problems.append("parallel.offload_modules: only used with fine_grained_activation_offloading=true")
    if p.overlap_param_gather and not (p.use_distributed_optimizer and p.overlap_grad_reduce):
        problems.append("parallel.overlap_param_gather: needs use_distributed_optimizer=true and overlap_grad_reduce=true")
    if p.tp_comm_overlap:
        if p.tensor_model_parallel_size < 2 or not p.sequence_parallel:
            problems.append("parallel.tp_comm_overlap: overlaps the sequence-parallel all-gathers and reduce-scatters; "
                            "needs tensor_model_parallel_size > 1 and sequence_parallel=true")
        if p.context_parallel_size > 1:
            problems.append("parallel.tp_comm_overlap: Transformer Engine's userbuffers have a fixed token count, but "
                            "under CP every document is padded, so micro-batches differ in length; use CP=1")
        if on_cpu:
            problems.append(f"parallel.tp_comm_overlap: {no_te}")
        if p.tp_comm_overlap_cfg and for_new_runs:  # a past run's file need not be here
            try:
                read_userbuffer_settings(p.tp_comm_overlap_cfg, fp8=r.precision.fp8 is not None)
            except ValueError as e:
                problems.append(str(e))
    elif p.tp_comm_overlap_cfg:
        problems.append("parallel.tp_comm_overlap_cfg: only used with parallel.tp_comm_overlap=true")
    if o.optimizer_cpu_offload:
        if not p.use_distributed_optimizer or o.optimizer != "adam":
            problems.append("optimizer.optimizer_cpu_offload: needs parallel.use_distributed_optimizer=true and "
                            "optimizer.optimizer=adam (Megatron-Core's precision-aware optimizer path)")
        if on_cpu:
            # The CPU (local) layer spec keeps RMSNorm weights in fp32, and Megatron-Core's
            # offloading path cannot step fp32 parameter shards (they are views).
            problems.append("optimizer.optimizer_cpu_offload: runs on GPUs only (Megatron-Core's offloaded optimizer "
                            "needs all-bf16 parameters, which only the Transformer Engine layers have)")


def validate(recipe: Recipe, world_size: Optional[int] = None, for_new_runs: bool = True) -> None:
    """Raise RecipeError listing every problem (not just the first). for_new_runs=False leaves
    out the checks that keep new runs off known kernel faults and those of files a launch
    reads (to read the recipe of a past run)."""
    # The combination checks assume every value is in range (no division by zero, no NaN).
    problems = field_problems(recipe)
    if not problems:
        _check_model(recipe, problems)
        _check_parallel(recipe, problems, world_size)
        _check_precision(recipe, problems)
        _check_multi_query_attention(recipe, problems)
        if for_new_runs:
            _check_rope_fusion(recipe, problems)
        _check_train(recipe, problems)
        _check_checkpoint_and_data(recipe, problems)
        _check_memory_and_overlap(recipe, problems, for_new_runs)
    if problems:
        raise RecipeError(problems)
