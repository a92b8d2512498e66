"""``train.preflight=true``: every step of a launch up to the first GPU operation, then a report.

Checks what usually fails at the start of a multi-node job, without touching a GPU:
recipe and world-size validation, the rank/rendezvous environment (a gloo all-reduce
across all ranks), the data (this rank's first micro-batch through the real loader), and
what the checkpoint logic would do (resume / initialize / fresh). It trains nothing.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import data_parallel_size, validate
from megatron_ext.planning.shape import parameters_per_gpu
from megatron_ext.training.metrics import FlopsModel


def _checkpoint_plan(recipe: Recipe) -> str:
    """What the run's start-up will do, with the same checks (a checkpoint it would refuse fails
    preflight too), short of reading tensors and verifying checksums."""
    from megatron_ext.training.checkpoint import plan_start
    from megatron_ext.training.checkpoint_lock import lock_holder

    c = recipe.checkpoint
    plan = plan_start(recipe)
    if plan.kind == "resume":
        text = "; ".join([f"resume from {plan.path}", *plan.notes])
    elif plan.kind == "initialize":
        how = f"({'with' if c.pretrained_load_optim else 'without'} optimizer state)"
        # Reported, not raised: in a chained pipeline the previous stage has not written it yet.
        text = (f"initialize from {plan.path} {how}" if plan.path else
                f"initialize from {c.pretrained_checkpoint} {how}; NO CHECKPOINT THERE YET: the run will "
                f"fail unless an earlier stage writes one first")
    else:
        text = "random initialization"
    holder = lock_holder(c.save) if c.save else None
    return text + (f"; {c.save} IS IN USE by {holder}: the run will be refused" if holder else "")


def preflight(recipe: Recipe) -> int:
    from megatron_ext.launch_env import rank_env
    from megatron_ext.training.loader import build_dataset, micro_batches

    rank, world_size, local_rank = rank_env()
    validate(recipe, world_size=world_size)
    try:
        # As long as training's: with data.verify_checksums the other ranks wait here while each
        # node's local rank 0 hashes the data.
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    except (ValueError, RuntimeError) as e:
        import os

        env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "SLURM_PROCID")}
        raise RuntimeError(f"rendezvous failed for rank {rank}/{world_size} with {env}: {e}") from None
    ranks = torch.tensor([rank], dtype=torch.int64)
    dist.all_reduce(ranks)
    if int(ranks) != world_size * (world_size - 1) // 2:
        raise RuntimeError(f"rendezvous: ranks sum to {int(ranks)}, expected {world_size * (world_size - 1) // 2}")

    p = recipe.parallel
    dp = data_parallel_size(recipe, world_size)
    dp_rank = rank // (p.tensor_model_parallel_size * p.context_parallel_size)  # Megatron's default order: TP, CP, DP
    dataset = build_dataset(recipe, rank, local_rank)
    first = next(micro_batches(recipe, dataset, 0, dp_rank % dp, dp))
    plan = _checkpoint_plan(recipe)
    if rank == 0:
        t = recipe.train
        params, _ = parameters_per_gpu(recipe, tp=1)
        tokens = t.global_batch_size * t.seq_length
        step_flops = FlopsModel.from_recipe(recipe).training_flops([t.seq_length] * t.global_batch_size)
        print(f"PREFLIGHT ONLY (nothing trained, no GPU used): recipe {recipe.name}\n"
              f"  ranks: {world_size} rendezvous ok (gloo all-reduce), local rank {local_rank} on "
              f"{dist.get_backend()}; layout TP {p.tensor_model_parallel_size} x CP {p.context_parallel_size} x DP {dp}\n"
              f"  model: {params / 1e9:.3f}B parameters, seq_length {t.seq_length}, rotary_base {recipe.model.rotary_base:g}\n"
              f"  data: {len(dataset)} samples, domains {list(dataset.domain_names)}; first micro-batch "
              f"{tuple(first.tokens.shape)} tokens, {len(first.doc_lengths)} documents\n"
              f"  schedule: {t.train_iters} iterations x {tokens} tokens = {t.train_iters * tokens / 1e9:.2f}B tokens; "
              f"<= {step_flops / 1e15:.1f} PFLOP per iteration (one document per sample)\n"
              f"  checkpoint: {plan}; saving to {recipe.checkpoint.save}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0
