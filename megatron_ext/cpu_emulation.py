"""Run Megatron-Core's CUDA-assuming code on the CPU (``train.device=cpu``).

Megatron-Core calls ``torch.cuda.current_device()``, creates tensors with
``device='cuda'``, checks ``tensor.type() == 'torch.cuda.FloatTensor'`` and forks the CUDA
RNG. With those redirected to the CPU, the *same* model, DDP, distributed optimizer,
forward-backward schedule and distributed checkpointing run on a CPU with gloo. That is
what CI and the Slurm tests use to exercise the real training loop without a GPU.

Not for speed, and not a GPU substitute: Transformer Engine (THD attention, context
parallelism, FP8) does not exist here, so the model uses Megatron's local layer spec and
a dense block-diagonal causal mask.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_installed = False


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _NoOpStream:
    def __init__(self, *args, **kwargs): ...
    def wait_stream(self, *args): ...
    def wait_event(self, *args): ...
    def synchronize(self): ...
    def record_event(self, *args, **kwargs): return _NoOpEvent()
    def __enter__(self): return self
    def __exit__(self, *args): ...


class _NoOpEvent:
    def __init__(self, *args, **kwargs): ...
    def record(self, *args, **kwargs): ...
    def synchronize(self): ...
    def wait(self, *args, **kwargs): ...
    def query(self): return True
    def elapsed_time(self, other): return 0.0


class _CudaToCpu(TorchFunctionMode):
    """Rewrites device='cuda' arguments, .cuda() and .to('cuda') to the CPU, and reports
    CPU tensors under CUDA type names (Megatron's optimizer checks them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.", "torch.cuda.", 1)
        return func(*args, **kwargs)


def _reduce_scatter_tensor_via_all_reduce(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
    """gloo has no reduce-scatter; the distributed optimizer needs one."""
    reduced = input.clone()
    work = dist.all_reduce(reduced, op=op, group=group)
    rank = dist.get_rank(group)
    output.copy_(reduced.view(dist.get_world_size(group), -1)[rank].view_as(output))
    return work if async_op else None


def install() -> None:
    """Redirect CUDA to the CPU for the rest of the process (idempotent)."""
    global _installed
    if _installed:
        return
    cuda = torch.cuda
    cpu_rng = lambda *a, **k: torch.get_rng_state()  # noqa: E731
    cuda.current_device = lambda: torch.device("cpu")
    cuda.device_count = lambda: 1
    cuda.get_rng_state = cuda.random.get_rng_state = cpu_rng
    cuda.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: None
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream, cuda.Event = _NoOpStream, _NoOpEvent
    cuda.current_stream = cuda.default_stream = lambda *a, **k: _NoOpStream()
    cuda.stream = lambda s: contextlib.nullcontext()
    cuda.memory_allocated = cuda.max_memory_allocated = cuda.max_memory_reserved = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = lambda *a, **k: None

    import megatron.core.tensor_parallel.random as mcore_random

    mcore_random._get_cuda_rng_state = cpu_rng
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    dist.reduce_scatter_tensor = _reduce_scatter_tensor_via_all_reduce
    _patch_torch_adam_checkpointing()
    _CudaToCpu().__enter__()
    _installed = True



def _patch_torch_adam_checkpointing() -> None:
    """Make Megatron's distributed optimizer checkpoint torch.optim.Adam exactly.

    On GPUs it wraps TE's FusedAdam, which keeps the step count in its param groups. Here it
    wraps torch.optim.Adam, which keeps a per-parameter ``step`` created lazily at the first
    step, and Megatron 0.19 (a) cannot build a state dict for loading before that first step,
    and (b) restores the step as *one tensor shared by all parameters*, which torch's Adam
    then increments once per parameter per iteration, breaking its bias correction; (c) below.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original_sharded_state_dict = DistributedOptimizer.sharded_state_dict
    original_load_state_dict = DistributedOptimizer.load_state_dict

    def sharded_state_dict(self, model_sharded_state_dict, is_loading=False, *args, **kwargs):
        if is_loading and not self.optimizer.state:
            # A zero-gradient step on the fp32 master copies creates the state; the model's
            # weights are untouched and the checkpoint then replaces master copies and state.
            self._init_optimizer_states_with_dummy_values()
        return original_sharded_state_dict(self, model_sharded_state_dict, is_loading, *args, **kwargs)

    def load_state_dict(self, state_dict):
        original_load_state_dict(self, state_dict)
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if "step" in self.optimizer.state.get(param, {}):
                    self.optimizer.state[param]["step"] = torch.tensor(float(group["step"]))

    original_set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        # (c) its fully_reshardable load copies every tensor of a parameter's state from the
        # checkpoint, which (as with FusedAdam) holds no per-parameter ``step``: a None is skipped,
        # and load_state_dict above restores the step.
        return original_set_states(self, model_param, {"step": None} | tensors)

    DistributedOptimizer.sharded_state_dict = sharded_state_dict
    DistributedOptimizer.load_state_dict = load_state_dict
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
