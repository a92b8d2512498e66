"""Process-group and model-parallel setup, seeds (torchrun or plain srun)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import validate
from megatron_ext.net import free_port


@dataclass(frozen=True)
class Layout:
    rank: int
    world_size: int
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


def _rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun, else from srun's task variables."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_LOCALID"])
    # A lone process: any free port, so that several single-GPU runs can share a node.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    return 0, 1, 0


def initialize(recipe: Recipe) -> Layout:
    """Start torch.distributed and Megatron's parallel state; validate against the world size."""
    from megatron.core import parallel_state, tensor_parallel

    rank, world_size, local_rank = _rank_env()
    validate(recipe, world_size=world_size)
    if recipe.train.device == "cpu":
        from megatron_ext import cpu_emulation

        cpu_emulation.install()
        backend = "gloo"
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no GPU is visible; use train.device=cpu for a CPU run")
        torch.cuda.set_device(local_rank)
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
        rank=rank, world_size=world_size,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(), tp_size=p.tensor_model_parallel_size,
        cp_rank=parallel_state.get_context_parallel_rank(), cp_size=p.context_parallel_size,
        dp_rank=parallel_state.get_data_parallel_rank(), dp_size=parallel_state.get_data_parallel_world_size(),
    )


def shutdown() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
