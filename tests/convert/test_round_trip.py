"""HF -> Megatron -> HF is bit-exact, and the export is an ordinary transformers checkpoint."""

import json

import pytest
import torch
from convert_fixtures import hf_state

from megatron_ext.convert import export_hf_checkpoint
from megatron_ext.convert.dist_checkpoint_io import DistCheckpointReader
from megatron_ext.convert.reference_models import TINY_CONFIGS, random_tokens
from megatron_ext.convert.tensor_map import EMBEDDING


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_round_trip_is_bit_exact_and_loads_in_transformers(name, hf_models, imported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = hf_state(hf_models[name])
    dtype = next(iter(source.values())).dtype
    out = export_hf_checkpoint(imported[name][0], tmp_path / "hf", hf_models[name], dtype=dtype, progress=False).output

    exported = hf_state(out)
    assert sorted(exported) == sorted(source)
    for key, tensor in source.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key

    config = json.loads((out / "config.json").read_text())
    original = json.loads((hf_models[name] / "config.json").read_text())
    for key in ("vocab_size", "num_key_value_heads", "head_dim", "tie_word_embeddings", "max_position_embeddings"):
        assert config[key] == original[key], key
    assert config["rope_theta"] == original["rope_parameters"]["rope_theta"]

    reference = AutoModelForCausalLM.from_pretrained(hf_models[name])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.rope_parameters == reference.config.rope_parameters
    tokens = random_tokens(TINY_CONFIGS[name]["vocab_size"])
    assert torch.equal(model(tokens).logits, reference(tokens).logits)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("t5 t7")["input_ids"] == [5, 7]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_vocab_padding_is_zero_and_stripped(hf_models, imported):
    checkpoint, model = imported["odd_vocab_bf16"]
    embedding = DistCheckpointReader(checkpoint).read(EMBEDDING)
    assert embedding.shape == (384, 64) and model["vocab_size"] == 301
    assert torch.equal(embedding[:301], hf_state(hf_models["odd_vocab_bf16"])["model.embed_tokens.weight"])
    assert not embedding[301:].any()


def test_tied_checkpoint_has_no_output_layer(imported):
    assert "output_layer.weight" not in DistCheckpointReader(imported["tied"][0]).tensor_shapes()
    assert "output_layer.weight" in DistCheckpointReader(imported["llama3"][0]).tensor_shapes()


def test_sharded_export_with_index(hf_models, imported, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_hf_checkpoint(imported["llama3"][0], tmp_path / "hf", hf_models["llama3"], dtype=torch.float32,
                               max_shard_bytes=100_000, progress=False).output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards == sorted(p.name for p in out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out)
    source = hf_state(hf_models["llama3"])
    assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in source.items())


def test_export_dtype_option(hf_models, imported, tmp_path):
    out = export_hf_checkpoint(imported["llama3"][0], tmp_path / "hf", hf_models["llama3"], progress=False).output
    exported = hf_state(out)
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    source = hf_state(hf_models["llama3"])
    assert all(torch.equal(exported[k], v.to(torch.bfloat16)) for k, v in source.items())
