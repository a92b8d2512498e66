"""A Llama-family decoder described once, independent of Megatron and Hugging Face names.

Import reads it from an HF ``config.json`` and writes the matching ``model:`` recipe section;
export reads it from the recipe stored in a training checkpoint and writes the HF config.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import yaml

from megatron_ext.config.schema import ModelConfig, Recipe
from megatron_ext.config.validate import padded_vocab_size
from megatron_ext.convert.errors import ConversionError

# Megatron-Core's llama3 RoPE scaling has these fixed (RotaryEmbedding._apply_scaling); only
# the factor is configurable. Llama-3.1/3.2/3.3 use exactly these values.
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0
LLAMA3_ORIGINAL_CONTEXT = 8192


@dataclass(frozen=True)
class LlamaArchitecture:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    # Tokenizer vocabulary (HF vocab_size) and Megatron's padded embedding rows.
    vocab_size: int
    padded_vocab_size: int
    norm_epsilon: float
    tie_embeddings: bool
    rope_theta: float
    # Llama-3.1 "llama3" RoPE scaling factor; None = plain RoPE.
    rope_scaling_factor: Optional[float]
    max_position_embeddings: int

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def qkv_rows(self) -> int:
        """Rows of Megatron's fused QKV weight: per group, its query heads plus one key and one value."""
        return self.num_query_groups * (self.heads_per_group + 2) * self.head_dim


# Fields that ModelConfig and LlamaArchitecture name alike.
_SHARED_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                  "vocab_size", "norm_epsilon", "max_position_embeddings")


def architecture_from_model_config(model: ModelConfig) -> LlamaArchitecture:
    return LlamaArchitecture(
        **{name: getattr(model, name) for name in _SHARED_FIELDS},
        head_dim=model.kv_channels or model.hidden_size // model.num_attention_heads,
        padded_vocab_size=padded_vocab_size(Recipe(model=model)),
        tie_embeddings=not model.untie_embeddings_and_output_weights,
        rope_theta=float(model.rotary_base),
        rope_scaling_factor=model.rope_scaling_factor if model.use_rope_scaling else None,
    )


def model_config_from_architecture(arch: LlamaArchitecture, make_vocab_size_divisible_by: int) -> ModelConfig:
    return ModelConfig(
        **{name: getattr(arch, name) for name in _SHARED_FIELDS},
        kv_channels=arch.head_dim,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        untie_embeddings_and_output_weights=not arch.tie_embeddings,
        rotary_base=arch.rope_theta,
        use_rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or ModelConfig.rope_scaling_factor,
    )


def model_config_from_dict(values: dict, where: str) -> ModelConfig:
    """A ModelConfig from a recipe's ``model`` mapping; unknown keys are an error, not dropped."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConversionError(f"{where}: model keys this version does not know: {', '.join(unknown)}")
    return ModelConfig(**values)


def model_yaml(model: ModelConfig, comment: str) -> str:
    """The recipe ``model:`` section for this model (a recipe can use it as a ``base:``)."""
    body = {f.name: getattr(model, f.name) for f in fields(ModelConfig)}
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + yaml.safe_dump({"model": body}, sort_keys=False)
