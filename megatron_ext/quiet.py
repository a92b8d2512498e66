"""Warnings a user cannot act on, kept out of the output of training, the planner and the conversion tools.

Megatron-Core warns that NVIDIA Apex is missing (it is not on the package registry;
Megatron falls back to Transformer Engine or PyTorch kernels, which is what this project
uses), on CPUs that Transformer Engine is missing (it cannot run there), and logs notes
meant for its own API's callers (deprecations, a DDP layout it computes itself). None of
them says anything about a recipe. Matched by message (the start of it, a regular
expression for warnings), so a new warning still shows.
"""

import logging
import warnings

UNACTIONABLE_WARNINGS = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",                        # Megatron's own default for cuda_graph_modules
    "MimoModelConfig is experimental",                 # imported by Megatron, never used here
    "The .grad attribute of a Tensor that is not a leaf Tensor",  # cpu_emulation's redirection
    "`torch.distributed.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",  # Megatron's calls
    "Could not determine rank from torch.distributed",  # Megatron's dataset helpers outside a job (the planner)
    "torch.distributed is disabled",                   # DCP in the conversion tools: one process on purpose
)
# logger name -> the start of its messages to drop
UNACTIONABLE_LOGS = {
    "megatron.core.models.gpt.gpt_model": "GPTModel IS DEPRECATED",
    "megatron.core.distributed.distributed_data_parallel": "DistributedDataParallel: full_param_layout not provided",
    "megatron.core.rerun_state_machine": ("Implicit initialization of Rerun State Machine",
                                          "RerunStateMachine initialized in mode RerunMode.DISABLED"),
    "megatron.core.dist_checkpointing.strategies.torch": "MCore's async save is deprecated",
}


def hide_unactionable_warnings() -> None:
    for message in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, starts in UNACTIONABLE_LOGS.items():
        logging.getLogger(name).addFilter(lambda record, starts=starts: not record.getMessage().startswith(starts))
