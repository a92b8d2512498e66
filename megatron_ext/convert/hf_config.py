"""HF ``config.json`` <-> LlamaArchitecture.

Reading refuses every setting that Megatron-Core's Llama (``megatron_ext.model.llama``) cannot
represent, naming the field, instead of converting into a model that computes something else.
Writing uses the keys of Meta's published Llama configs (``rope_theta`` + ``rope_scaling``),
which every transformers version (4.x and 5.x) and vLLM read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from megatron_ext.convert.architecture import (
    LLAMA3_HIGH_FREQ_FACTOR,
    LLAMA3_LOW_FREQ_FACTOR,
    LLAMA3_ORIGINAL_CONTEXT,
    LlamaArchitecture,
)
from megatron_ext.convert.errors import ConversionError

if TYPE_CHECKING:  # torch is imported only where tensors are handled: the tools answer fast
    import torch

# transformers' LlamaConfig defaults for keys a config.json may leave out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "rope_theta": 10000.0,
                "tie_word_embeddings": False}
_FIXED_FIELDS = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu"}
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def read_config_json(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir} is not a Hugging Face model directory: no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None


def _rope(config: dict, problems: List[str]) -> Tuple[float, Optional[float]]:
    """(theta, llama3 factor or None) from transformers-5 ``rope_parameters`` or legacy keys."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", config.get("rope_theta", _HF_DEFAULTS["rope_theta"])))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        problems.append(f"rope_scaling type {rope_type!r}: Megatron-Core's Llama supports plain RoPE and "
                        f"Llama-3.1's 'llama3' scaling only")
        return theta, None
    fixed = {"low_freq_factor": LLAMA3_LOW_FREQ_FACTOR, "high_freq_factor": LLAMA3_HIGH_FREQ_FACTOR,
             "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT}
    for key, value in fixed.items():
        if float(params.get(key, value)) != value:
            problems.append(f"rope_scaling.{key}={params[key]}: Megatron-Core fixes it at {value:g} "
                            f"(only the llama3 factor is configurable)")
    if "factor" not in params:
        problems.append("rope_scaling: llama3 scaling without a 'factor'")
        return theta, None
    return theta, float(params["factor"])


def architecture_from_hf_config(config: dict, make_vocab_size_divisible_by: int, where: str) -> LlamaArchitecture:
    problems: List[str] = []
    if "text_config" in config:
        problems.append("multimodal configs (text_config) are not supported; convert a text-only Llama")
    if config.get("model_type") != "llama":
        problems.append(f"model_type {config.get('model_type')!r}: only 'llama' (LlamaForCausalLM) is supported")
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if architectures != ["LlamaForCausalLM"]:
        problems.append(f"architectures {architectures}: only ['LlamaForCausalLM'] is supported")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        problems.append(f"quantization_config ({method}): quantized weights are not supported; "
                        f"de-quantize to bf16/fp32 safetensors first")
    for key, expected in _FIXED_FIELDS.items():
        if config.get(key, expected) != expected:
            problems.append(f"{key}={config[key]!r}: Megatron's Llama here has {key}={expected!r}")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={config['partial_rotary_factor']}: only full-width RoPE is supported")
    missing = [key for key in _REQUIRED if not isinstance(config.get(key), int)]
    if missing:
        problems.append(f"missing or non-integer field(s): {', '.join(missing)}")
        raise ConversionError(f"{where}: cannot convert this model:\n  - " + "\n  - ".join(problems))

    heads = config["num_attention_heads"]
    groups = config.get("num_key_value_heads") or heads
    if heads % groups:
        problems.append(f"num_key_value_heads={groups} does not divide num_attention_heads={heads}")
    theta, factor = _rope(config, problems)
    if problems:
        raise ConversionError(f"{where}: cannot convert this model:\n  - " + "\n  - ".join(problems))
    vocab = config["vocab_size"]
    divisor = make_vocab_size_divisible_by
    return LlamaArchitecture(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=vocab,
        padded_vocab_size=-(-vocab // divisor) * divisor,
        norm_epsilon=float(config.get("rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])),
        tie_embeddings=bool(config.get("tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])),
        rope_theta=theta,
        rope_scaling_factor=factor,
        max_position_embeddings=int(config.get("max_position_embeddings", _HF_DEFAULTS["max_position_embeddings"])),
    )


def special_token_ids(config: dict) -> dict:
    return {key: config[key] for key in _SPECIAL_TOKEN_IDS if config.get(key) is not None}


def hf_config_from_architecture(arch: LlamaArchitecture, dtype: torch.dtype, token_ids: dict) -> dict:
    rope_scaling = None
    if arch.rope_scaling_factor is not None:
        rope_scaling = {"rope_type": "llama3", "factor": arch.rope_scaling_factor,
                        "low_freq_factor": LLAMA3_LOW_FREQ_FACTOR, "high_freq_factor": LLAMA3_HIGH_FREQ_FACTOR,
                        "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": arch.norm_epsilon,
        "vocab_size": arch.vocab_size,
        "tie_word_embeddings": arch.tie_embeddings,
        "max_position_embeddings": arch.max_position_embeddings,
        "rope_theta": arch.rope_theta,
        "rope_scaling": rope_scaling,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **token_ids,
    }
