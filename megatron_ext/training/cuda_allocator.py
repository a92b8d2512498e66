"""PyTorch CUDA allocator settings for training, applied before the first CUDA allocation."""

from __future__ import annotations

import os
from typing import MutableMapping

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def use_expandable_segments(environ: MutableMapping[str, str] = os.environ) -> str:
    """Ask for growable allocator segments unless the user configured the allocator.

    Long-context steps allocate activations of many sizes (every micro-batch holds other
    document lengths); with fixed-size segments the cache fragments until a step fails with
    memory reserved but unallocated (2xH200, 128K CP2 p2p: out of memory with 19 GiB so
    stranded). The launcher (slurm/gpu_env.sh) sets the same default; this covers torchrun
    and benchmark launches. Returns the value in effect."""
    return environ.setdefault(ALLOC_CONF, "expandable_segments:True")
