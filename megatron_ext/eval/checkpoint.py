"""Checks that a directory is a usable HF causal-LM checkpoint before anything is loaded."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class CheckpointError(ValueError):
    """The checkpoint, tokenizer or requested lengths cannot be evaluated."""


@dataclass
class CheckpointInfo:
    path: Path
    tokenizer_path: Path
    model_type: str
    max_position_embeddings: int | None
    rope_theta: float | None
    torch_dtype: str | None

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "tokenizer_path": str(self.tokenizer_path),
            "model_type": self.model_type,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "torch_dtype": self.torch_dtype,
        }


def inspect_checkpoint(path: str | Path, tokenizer: str | Path | None = None) -> CheckpointInfo:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a Hugging Face checkpoint directory (config.json + weights)")
    config_file = path / "config.json"
    if not config_file.is_file():
        hint = ""
        if any(path.glob("*.gguf")) or any(path.glob("iter_*")) or (path / "latest_checkpointed_iteration.txt").exists():
            hint = " It looks like a GGUF or Megatron checkpoint: export it to HF format first (see the conversion tool)."
        raise CheckpointError(f"{path} is not a Hugging Face checkpoint directory: no config.json.{hint}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{path} has config.json but no weights (expected one of: {', '.join(WEIGHT_FILES)})")
    if "model_type" not in config:
        raise CheckpointError(f"{config_file} has no model_type; is this a transformers config?")

    tokenizer_path = Path(tokenizer) if tokenizer else path
    if not any((tokenizer_path / name).is_file() for name in TOKENIZER_FILES):
        where = "the given --tokenizer directory" if tokenizer else "the checkpoint directory"
        raise CheckpointError(
            f"no tokenizer in {where} {tokenizer_path} (looked for {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the weights or pass --tokenizer DIR"
        )

    text_config = config.get("text_config", config)  # multimodal configs nest the LM config
    rope_theta = text_config.get("rope_theta") or (text_config.get("rope_parameters") or {}).get("rope_theta")
    return CheckpointInfo(
        path=path,
        tokenizer_path=tokenizer_path,
        model_type=config["model_type"],
        max_position_embeddings=text_config.get("max_position_embeddings"),
        rope_theta=rope_theta,
        torch_dtype=text_config.get("torch_dtype") or text_config.get("dtype"),
    )


def check_lengths(lengths: list[int], max_position_embeddings: int | None, allow_beyond: bool) -> list[int]:
    """Return the lengths beyond the trained window; refuse them unless explicitly allowed."""
    if not lengths:
        raise CheckpointError("no context lengths given")
    if any(n <= 0 for n in lengths):
        raise CheckpointError(f"context lengths must be positive, got {lengths}")
    if max_position_embeddings is None:
        return []
    beyond = [n for n in lengths if n > max_position_embeddings]
    if beyond and not allow_beyond:
        raise CheckpointError(
            f"lengths {beyond} exceed the model's max_position_embeddings={max_position_embeddings}; "
            "pass --allow-beyond-max-position to evaluate extrapolation anyway"
        )
    if beyond:
        warnings.warn(
            f"evaluating at {beyond}, beyond max_position_embeddings={max_position_embeddings}: "
            "scores there measure length extrapolation",
            stacklevel=2,
        )
    return beyond
