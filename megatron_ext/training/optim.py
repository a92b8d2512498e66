"""Megatron-Core DDP, (distributed) optimizer and LR schedule from the recipe."""

from __future__ import annotations

from contextlib import contextmanager

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import decay_iters, warmup_iters


# Gradient bucket size in parameters: Megatron-Core's default for up to 40 data-parallel ranks,
# where its own grows with DP (larger NCCL chunks). Fixed, so that a per-rank optimizer checkpoint
# (its buffers are cut into these buckets) resumes at any DP size; the shipped recipes run at DP <= 32.
DDP_BUCKET_SIZE = 40_000_000


def wrap_ddp(recipe: Recipe, config, model):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    p = recipe.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        bucket_size=DDP_BUCKET_SIZE,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.use_distributed_optimizer,
        check_for_nan_in_grad=True,
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


@contextmanager
def parameters_gathered(ddp_model):
    """The model's weights are the latest inside this block.

    With overlap_param_gather the optimizer step leaves the updated bf16 weights to be
    all-gathered during the next forward, so a checkpoint written in between would hold the
    previous iteration's weights (a weights-only handoff or an HF export would read them).
    Megatron-LM's own loop wraps its saves the same way."""
    if not ddp_model.ddp_config.overlap_param_gather:
        yield
        return
    ddp_model.disable_forward_pre_hook()  # all-gathers every bucket synchronously
    try:
        yield
    finally:
        ddp_model.enable_forward_pre_hook()


def build_optimizer(recipe: Recipe, ddp_model):
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = recipe.optimizer
    config = OptimizerConfig(
        optimizer=o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=recipe.precision.bf16,
        params_dtype=torch.bfloat16 if recipe.precision.bf16 else torch.float32,
        use_distributed_optimizer=recipe.parallel.use_distributed_optimizer,
        # Megatron-Core's CPU offload runs through the precision-aware optimizer's code path
        # (Megatron-LM requires both flags together).
        optimizer_cpu_offload=o.optimizer_cpu_offload,
        optimizer_offload_fraction=o.optimizer_offload_fraction,
        use_precision_aware_optimizer=o.optimizer_cpu_offload,
    )
    return get_megatron_optimizer(config, [ddp_model])


def build_scheduler(recipe: Recipe, optimizer):
    """Megatron's OptimizerParamScheduler, counted in iterations (one step() per iteration)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, s = recipe.optimizer, recipe.scheduler
    decay = decay_iters(recipe)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=s.lr_warmup_init,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=warmup_iters(recipe),
        lr_decay_steps=decay,
        lr_decay_style=s.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
        # The recipe is authoritative on resume (e.g. train_iters extended); the checkpointer
        # logs every schedule value that differs from the checkpoint's.
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
