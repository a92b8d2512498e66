"""Process-group and model-parallel setup, seeds (torchrun or plain srun)."""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import validate
from megatron_ext.launch_env import LaunchError, rank_env


@dataclass(frozen=True)
class Layout:
    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    cp_rank: int
    cp_size: int
    dp_rank: int
    dp_size: int

    @property
    def is_logger(self) -> bool:
        """The rank that writes logs and TensorBoard (first rank; it holds the loss)."""
        return self.rank == 0


def select_gpu(local_rank: int) -> None:
    """Select this rank's GPU; a machine without (enough) usable GPUs is the user's to fix."""
    with warnings.catch_warnings(record=True) as caught:  # torch says why CUDA failed as a warning
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = f" ({' '.join(str(caught[0].message).split())})" if caught else ""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = (f"check CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None
                else "use train.device=cpu for a CPU run")
        raise LaunchError(f"train.device=cuda but no GPU is visible{why}; {hint}")
    if local_rank >= count:
        raise LaunchError(f"local rank {local_rank} has no GPU: {count} visible on this node; "
                          f"launch at most {count} processes per node")
    torch.cuda.set_device(local_rank)


def initialize(recipe: Recipe) -> Layout:
    """Start torch.distributed and Megatron's parallel state; validate against the world size."""
    from megatron.core import parallel_state, tensor_parallel

    rank, world_size, local_rank = rank_env()
    validate(recipe, world_size=world_size)
    if recipe.train.device == "cpu":
        from megatron_ext import cpu_emulation

        cpu_emulation.install()
        backend = "gloo"
    else:
        select_gpu(local_rank)
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    p = recipe.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        hierarchical_context_parallel_sizes=p.hierarchical_context_parallel_sizes,
    )
    seed = recipe.train.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Megatron's tracker: same seed across DP for shared weights, distinct per TP rank.
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return Layout(
        rank=rank, world_size=world_size, local_rank=local_rank,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(), tp_size=p.tensor_model_parallel_size,
        cp_rank=parallel_state.get_context_parallel_rank(), cp_size=p.context_parallel_size,
        dp_rank=parallel_state.get_data_parallel_rank(), dp_size=parallel_state.get_data_parallel_world_size(),
    )


def shutdown() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
