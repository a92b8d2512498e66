"""Does a converted checkpoint compute what the HF model computes? Logits side by side.

The Megatron side is loaded the way training loads it (recipe -> initialize -> GPTModel ->
DDP -> optimizer -> ``Checkpointer`` with ``pretrained_checkpoint``), so a pass means a
training run starts from exactly the HF model. Used by the CPU tests (local layer spec,
CPU emulation) and by tools/gpu/check_conversion.py (Transformer Engine spec).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch

from megatron_ext.config.schema import (
    DataConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
    Recipe,
    SchedulerConfig,
    SyntheticDataConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class LogitsComparison:
    max_abs_diff: float
    mean_abs_diff: float
    # Largest |logit| of the reference, to read the differences against.
    max_abs_logit: float
    # Share of positions where both pick the same most likely token.
    top1_agreement: float

    def as_dict(self) -> dict:
        return asdict(self)


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> LogitsComparison:
    if reference.shape != candidate.shape:
        raise ValueError(f"logits shapes differ: {list(reference.shape)} vs {list(candidate.shape)}")
    reference, candidate = reference.double(), candidate.double()
    diff = (reference - candidate).abs()
    agree = (reference.argmax(-1) == candidate.argmax(-1)).double().mean()
    return LogitsComparison(max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
                            max_abs_logit=reference.abs().max().item(), top1_agreement=agree.item())


def inference_recipe(model: ModelConfig, checkpoint: Path, tensor_parallel: int, world_size: int, device: str,
                     bf16: bool, seq_length: int) -> Recipe:
    """A recipe that builds ``model`` at the given layout and initializes it from ``checkpoint``."""
    recipe = Recipe(
        name="conversion-check",
        model=model,
        parallel=ParallelConfig(tensor_model_parallel_size=tensor_parallel, sequence_parallel=False),
        precision=PrecisionConfig(bf16=bf16),
        train=TrainConfig(device=device, seq_length=seq_length, micro_batch_size=1,
                          global_batch_size=world_size // tensor_parallel, train_iters=1),
        scheduler=SchedulerConfig(lr_warmup_fraction=None),
        data=DataConfig(synthetic=SyntheticDataConfig(), num_workers=0),
    )
    recipe.checkpoint.pretrained_checkpoint = str(checkpoint)
    return recipe


def load_megatron(recipe: Recipe, layout, log=print):
    """(DDP-wrapped model, Checkpointer) with the weights of recipe.checkpoint.pretrained_checkpoint.

    ``layout`` is what ``megatron_ext.training.distributed.initialize(recipe)`` returned.
    """
    from megatron_ext.model.llama import build_gpt_model, transformer_config
    from megatron_ext.training.checkpoint import Checkpointer
    from megatron_ext.training.optim import build_optimizer, build_scheduler, wrap_ddp

    checkpointer = Checkpointer(recipe, layout, log=log)
    plan = checkpointer.claim()
    config = transformer_config(recipe)
    ddp_model = wrap_ddp(recipe, config, build_gpt_model(recipe, config))
    optimizer = build_optimizer(recipe, ddp_model)
    checkpointer.load(plan, ddp_model, optimizer, build_scheduler(recipe, optimizer))
    return ddp_model, checkpointer


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor, vocab_size: int, use_te: bool) -> torch.Tensor:
    """[batch, seq, vocab_size] fp32 logits on every rank (gathered over TP, padding stripped)."""
    batch, seq = tokens.shape
    positions = torch.arange(seq, device=tokens.device).expand(batch, seq)
    # TE's spec masks causally by itself; the local spec takes Megatron's boolean mask (True = hidden).
    mask = None if use_te else torch.ones(seq, seq, dtype=torch.bool, device=tokens.device).triu(1).expand(
        batch, 1, seq, seq)
    model.eval()
    logits = model(tokens, positions, mask, runtime_gather_output=True)
    return logits[..., :vocab_size].float()


@torch.no_grad()
def hf_logits(hf_dir: Path, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="eager").to(tokens.device)
    model.eval()
    return model(tokens).logits.float()


def finetune_overrides(model: dict, pretrained: Path, save: Path) -> List[str]:
    """Training overrides that start from an imported checkpoint: its model section (``model.yaml``)
    except RoPE theta and context length, which stay the recipe's (ProLong sets its own)."""
    kept = {key: value for key, value in model.items() if key not in ("rotary_base", "max_position_embeddings")}
    return [*(f"model.{key}={'null' if value is None else value}" for key, value in kept.items()),
            f"checkpoint.pretrained_checkpoint={pretrained}", f"checkpoint.save={save}"]
