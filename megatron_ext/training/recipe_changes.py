"""Which recipe changes a resume or a stage handoff can take, against the recipe a checkpoint stores.

Resume continues a run exactly, so only keys that do not change what is trained may differ:

- may change: ``train.train_iters`` (extend a run), ``train.micro_batch_size``,
  ``train.exit_after_iters``, ``train.device``, ``train.preflight``, the parallel layout,
  memory knobs and precision (checkpoints are resharded on load; an optimizer state saved per
  rank only with the same ``PER_RANK_OPTIMIZER_KEYS``), the optimizer's and
  scheduler's numbers (the recipe wins, with a warning) and its CPU offload, ``checkpoint.*``,
  ``logging.*``, ``data.num_workers``, ``data.verify_checksums``, ``data.balance_data_parallel``
  (same samples per batch), ``name``;
- refused: everything else: the model (shapes, RoPE), ``train.seed``, ``train.seq_length``,
  ``train.global_batch_size``, ``train.reset_attention_mask``, ``optimizer.optimizer`` and the
  data (mixture, synthetic settings; data file paths are compared by file name, so a moved
  data directory resumes). With another seed or mixture the run would silently continue on
  another data stream; with another model the load fails deep inside Megatron.

A stage handoff (``checkpoint.pretrained_checkpoint``) starts a new schedule and may change
anything but the tensor shapes (``MODEL_SHAPE_KEYS``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import yaml
from omegaconf import OmegaConf

from megatron_ext.config.schema import ModelConfig, Recipe
from megatron_ext.config.validate import head_dim
from megatron_ext.training.checkpoint_files import CheckpointError
from megatron_ext.training.optim import DDP_BUCKET_SIZE

# The common-state key under which tools/convert_hf_to_megatron.py records the model it imported.
IMPORT_RECORD = "hf_import"

# Every recipe key is in exactly one of these (a key or a whole section; tested), so that a
# new key gets a decision. A key in neither is refused: the safe default.
RESUME_MAY_CHANGE = ("name", "parallel", "precision", "train.train_iters", "train.micro_batch_size",
                     "train.exit_after_iters", "train.device", "train.preflight", "optimizer.lr", "optimizer.min_lr",
                     "optimizer.weight_decay", "optimizer.adam_beta1", "optimizer.adam_beta2", "optimizer.adam_eps",
                     "optimizer.clip_grad", "optimizer.optimizer_cpu_offload", "optimizer.optimizer_offload_fraction",
                     "scheduler", "checkpoint", "logging", "data.num_workers", "data.verify_checksums",
                     "data.balance_data_parallel")
RESUME_REFUSES = ("model", "train.seq_length", "train.global_batch_size", "train.seed", "train.reset_attention_mask",
                  "optimizer.optimizer", "data.synthetic", "data.domains")
MODEL_SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                    "kv_channels", "vocab_size", "make_vocab_size_divisible_by", "untie_embeddings_and_output_weights")


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict):
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out = {f"{prefix}length": len(value)}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def matches(key: str, patterns) -> bool:
    """``key`` is one of ``patterns`` or lies in one of them (``model`` covers ``model.vocab_size``)."""
    return any(key == p or key.startswith(p + ".") for p in patterns)


def _comparable(key: str, value: Any) -> Any:
    if key.startswith("data.domains.") and key.endswith(".paths") and isinstance(value, list):
        return [os.path.basename(str(p)) for p in value]
    return value


def _differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """Keys present in both (a checkpoint from an older schema lacks new keys) whose values differ."""
    return [(key, saved[key], current[key]) for key in current
            if key in saved and _comparable(key, saved[key]) != _comparable(key, current[key])]


def _as_dict(recipe: Recipe) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(recipe))


def _listed(changes: List[Tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key} {old} -> {new}" for key, old, new in changes)


def check_resume(saved_yaml: str, recipe: Recipe, where: str) -> Optional[str]:
    """Refuse (CheckpointError) changes that would not continue the saved run; return a note
    listing the allowed ones (None if nothing changed)."""
    saved = _flatten(yaml.safe_load(saved_yaml) or {})
    changes = _differences(saved, _flatten(_as_dict(recipe)))
    refused = [c for c in changes if not matches(c[0], RESUME_MAY_CHANGE)]
    if refused:
        raise CheckpointError(
            f"{where} was trained with another recipe: {_listed(refused)} (checkpoint -> recipe). Resuming would "
            f"not continue that run (other model, data stream or batch); use the checkpoint's values, or start a new stage from it with "
            f"checkpoint.pretrained_checkpoint={where} and another checkpoint.save")
    return f"resuming with recipe changes: {_listed(changes)}" if changes else None


# A regular and a distributed optimizer save different trees of state, in every format.
OPTIMIZER_KIND_KEYS = ("parallel.use_distributed_optimizer",)
# What shapes a distributed optimizer's per-rank buffers (its dp_reshardable checkpoints) besides
# the DP/CP share: the parameters a rank holds (TP), their order (Transformer Engine's modules on
# GPUs, Megatron's local ones on the CPU), their dtype, and the gradient buckets (one bucket
# without overlapped reduction; their size is fixed, optim.py, and recorded with each save).
PER_RANK_OPTIMIZER_KEYS = ("parallel.tensor_model_parallel_size", "parallel.overlap_grad_reduce", "precision.bf16",
                           "train.device")


def check_optimizer_state(common: dict, recipe: Recipe, where: str, per_rank: bool, handoff: bool) -> None:
    """Refuse, naming the keys, a recipe that the checkpoint's optimizer state (``per_rank``:
    dp_reshardable) cannot be loaded into: before the model is built, not deep inside the load."""
    if "recipe" not in common:
        return
    keys = OPTIMIZER_KIND_KEYS + (PER_RANK_OPTIMIZER_KEYS if per_rank else ())
    saved = _flatten(yaml.safe_load(common["recipe"]) or {})
    changes = [c for c in _differences(saved, _flatten(_as_dict(recipe))) if c[0] in keys]
    # Saved before the size was recorded: Megatron's default, the same up to 40 data-parallel ranks.
    bucket = common.get("layout", {}).get("ddp_bucket_size", DDP_BUCKET_SIZE)
    if per_rank and bucket != DDP_BUCKET_SIZE:
        changes.append(("gradient bucket size (megatron_ext/training/optim.py)", bucket, DDP_BUCKET_SIZE))
    if not changes:
        return
    remedies = ["use the checkpoint's values"]
    if handoff:
        remedies.append("set checkpoint.pretrained_load_optim=false to take its weights only")
    if any(key not in OPTIMIZER_KIND_KEYS for key, _, _ in changes):
        remedies.append("start from a fully reshardable save (a run's last by default; this one keeps the state "
                        "per rank: checkpoint.dist_ckpt_optim_fully_reshardable is not `every`)")
    raise CheckpointError(f"{where}: its optimizer state loads only as saved: {_listed(changes)} (checkpoint -> "
                          f"recipe); {', or '.join(remedies)}")


def _head_dim(model: dict) -> int:
    shape = ModelConfig(kv_channels=model.get("kv_channels"), hidden_size=model["hidden_size"],
                        num_attention_heads=model["num_attention_heads"])
    return head_dim(Recipe(model=shape))


def saved_model_section(common: dict) -> Optional[dict]:
    """The model a checkpoint holds: its training recipe's, or the import record's."""
    if "recipe" in common:
        return (yaml.safe_load(common["recipe"]) or {}).get("model")
    if IMPORT_RECORD in common:
        return common[IMPORT_RECORD].get("model")
    return None


def check_model_shapes(saved_model: dict, model: ModelConfig, where: str) -> None:
    """Refuse a model whose tensor shapes differ from the checkpoint's, naming the keys."""
    current = OmegaConf.to_container(OmegaConf.structured(model))
    saved = {**current, **saved_model}
    saved["kv_channels"], current["kv_channels"] = _head_dim(saved), _head_dim(current)
    refused = [(f"model.{k}", saved[k], current[k]) for k in MODEL_SHAPE_KEYS if saved[k] != current[k]]
    if refused:
        raise CheckpointError(f"{where} holds another model shape: {_listed(refused)} (checkpoint -> recipe); "
                              f"set the recipe's model section to the checkpoint's")
