"""CUDA environment defaults for training, applied before CUDA initializes (both are read then).

The one place for them, for every kind of launch (Slurm, torchrun, benchmarks), so that what
runs is what was measured; slurm/gpu_env.sh sets only the allocator's, for its GPU jobs that
are not training (evaluation, conversion). A value the user set always wins."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, MutableMapping, Optional

if TYPE_CHECKING:
    from megatron_ext.config.schema import Recipe

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
MAX_CONNECTIONS = "CUDA_DEVICE_MAX_CONNECTIONS"
GROWABLE_SEGMENTS = "expandable_segments:True"
USERBUFFERS_SKIP_MULTICAST = "UB_SKIPMC"
# How NVLink multicast is switched off for NCCL (an integer) and for PyTorch's symmetric memory
# (a boolean as PyTorch reads it).
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": ("0",), "TORCH_SYMM_MEM_DISABLE_MULTICAST": ("1", "true", "yes", "y")}


def cuda_env_defaults(recipe: Recipe, environ: MutableMapping[str, str] = os.environ) -> Dict[str, str]:
    """Set the defaults the recipe needs; returns the values in effect.

    - Growable allocator segments: long-context steps allocate activations of many sizes
      (every micro-batch holds other document lengths); with fixed-size segments the cache
      fragments until a step fails with memory reserved but unallocated (2xH200, 128K CP2
      p2p: out of memory with 19 GiB so stranded).
    - One hardware work queue under tensor or context parallelism: Megatron-Core and Transformer
      Engine rely on it to start a TP/CP exchange before the computation it overlaps (TE's
      userbuffers for parallel.tp_comm_overlap too); Megatron-LM requires it for TP > 1 or
      CP > 1 on GPUs before Blackwell. Data parallelism alone keeps CUDA's default.
    - No NVLink multicast in TE's userbuffers where it is off for NCCL or PyTorch: for
      parallel.tp_comm_overlap they create a multicast object of their own (cuMulticastCreate)
      unless UB_SKIPMC is set, whatever NCCL was told. Hosts that switch multicast off (shared
      machines whose GPUs a multicast program can take out of service) must have it off here too.
      Read from the environment only: an NCCL_NVLS_ENABLE in /etc/nccl.conf is not seen."""
    in_effect = {ALLOC_CONF: environ.setdefault(ALLOC_CONF, GROWABLE_SEGMENTS)}
    p = recipe.parallel
    if p.tensor_model_parallel_size > 1 or p.context_parallel_size > 1:
        in_effect[MAX_CONNECTIONS] = environ.setdefault(MAX_CONNECTIONS, "1")
    if p.tp_comm_overlap and any(environ.get(k, "").strip().lower() in off for k, off in MULTICAST_OFF.items()):
        in_effect[USERBUFFERS_SKIP_MULTICAST] = environ.setdefault(USERBUFFERS_SKIP_MULTICAST, "1")
    return in_effect


def growable_segments_missing(in_effect: Dict[str, str]) -> Optional[str]:
    """Why growable segments, asked for, are not what the allocator read (something started CUDA
    before the settings were made); None if they are, or if this PyTorch cannot say."""
    import torch

    def asks_for_them(settings: str) -> bool:
        return GROWABLE_SEGMENTS.lower() in settings.replace(" ", "").lower()

    read = getattr(torch._C, "_accelerator_getAllocatorSettings", None)  # not in every PyTorch
    wanted = in_effect.get(ALLOC_CONF, "")
    if read is None or not asks_for_them(wanted):
        return None
    parsed = read()
    if asks_for_them(parsed):
        return None
    return (f"{ALLOC_CONF}={wanted} is not in effect (the allocator read {parsed!r}): CUDA started before "
            f"megatron_ext.train set it; set it in the launch's environment instead (long sequences may run "
            f"out of memory with memory reserved but unallocated)")
