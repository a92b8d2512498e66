"""HF config.json -> architecture: what is understood, and what is refused by name."""

import pytest
import torch

from megatron_ext.convert.architecture import architecture_from_model_config, model_config_from_architecture
from megatron_ext.convert.errors import ConversionError
from megatron_ext.convert.hf_config import architecture_from_hf_config, hf_config_from_architecture

LLAMA31_LEGACY = {  # Meta's Llama-3.1-8B config.json, as published (transformers 4.x keys)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
}


def _arch(config):
    return architecture_from_hf_config(config, 128, where="config.json")


def test_llama31_legacy_keys():
    a = _arch(LLAMA31_LEGACY)
    assert (a.num_layers, a.num_attention_heads, a.num_query_groups, a.head_dim) == (32, 32, 8, 128)
    assert (a.vocab_size, a.padded_vocab_size, a.tie_embeddings) == (128256, 128256, False)
    assert (a.rope_theta, a.rope_scaling_factor, a.max_position_embeddings) == (500000.0, 8.0, 131072)


def test_transformers5_rope_parameters_read_the_same():
    config = {k: v for k, v in LLAMA31_LEGACY.items() if k not in ("rope_theta", "rope_scaling")}
    config["rope_parameters"] = dict(LLAMA31_LEGACY["rope_scaling"], rope_theta=500000.0)
    assert _arch(config) == _arch(LLAMA31_LEGACY)


def test_defaults_and_padding():
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "vocab_size": 32001}
    a = _arch(config)
    assert (a.num_query_groups, a.rope_theta, a.rope_scaling_factor, a.norm_epsilon) == (4, 10000.0, None, 1e-6)
    assert a.padded_vocab_size == 32128


def test_recipe_model_section_round_trips():
    a = _arch(LLAMA31_LEGACY)
    assert architecture_from_model_config(model_config_from_architecture(a, 128)) == a


def test_written_config_reloads_in_transformers(tmp_path):
    import json

    from transformers import AutoConfig

    a = _arch(LLAMA31_LEGACY)
    config = hf_config_from_architecture(a, torch.bfloat16, {"bos_token_id": 1})
    (tmp_path / "config.json").write_text(json.dumps(config))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.rope_parameters == dict(LLAMA31_LEGACY["rope_scaling"], rope_theta=500000.0)
    assert (config.num_key_value_heads, config.max_position_embeddings, config.bos_token_id) == (8, 131072, 1)


@pytest.mark.parametrize("change, field", [
    ({"model_type": "mistral"}, "model_type"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
    ({"rope_scaling": dict(LLAMA31_LEGACY["rope_scaling"], high_freq_factor=2.0)}, "high_freq_factor"),
    ({"rope_scaling": dict(LLAMA31_LEGACY["rope_scaling"], original_max_position_embeddings=4096)},
     "original_max_position_embeddings"),
    ({"text_config": {}}, "text_config"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_unsupported_settings_are_refused_by_name(change, field):
    with pytest.raises(ConversionError, match="config.json: cannot convert") as error:
        _arch({**LLAMA31_LEGACY, **change})
    assert field in str(error.value)
