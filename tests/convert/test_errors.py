"""Bad input gets a clear message (exit code 2) and never leaves or destroys anything."""

import json
import shutil

import pytest
import torch
from convert_fixtures import REPO
from safetensors.torch import load_file, save_file

from megatron_ext.convert import cli, hf_to_megatron


def _import(capsys, *args):
    code = cli.import_main([*map(str, args), "--no-progress"])
    return code, capsys.readouterr().err


def _export(capsys, *args):
    code = cli.export_main([*map(str, args), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture
def hf_copy(hf_models, tmp_path):
    """A writable copy of the tiny Llama-3-like model."""
    return shutil.copytree(hf_models["llama3"], tmp_path / "hf")


def _edit_weights(hf_dir, edit):
    path = hf_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _leftovers(directory):
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.")]


def test_existing_output_is_kept_unless_overwrite(capsys, hf_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _import(capsys, hf_copy, out)
    assert code == 2 and "already exists; pass --overwrite" in err and (out / "keep.txt").exists()
    assert _import(capsys, hf_copy, out, "--overwrite")[0] == 0
    assert not (out / "keep.txt").exists() and (out / "metadata.json").exists() and not _leftovers(out)


def test_output_that_would_replace_the_input_is_refused(capsys, hf_copy):
    assert "would replace the input" in _import(capsys, hf_copy, hf_copy, "--overwrite")[1]
    assert "would replace the input" in _import(capsys, hf_copy, hf_copy.parent, "--overwrite")[1]
    assert "lies inside the input" in _import(capsys, hf_copy, hf_copy / "megatron")[1]
    assert (hf_copy / "model.safetensors").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing tensors: model.layers.1.mlp.up_proj.weight"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}),
     "does not have: model.layers.0.self_attn.q_proj.bias"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(32, 64)}),
     "model.layers.0.self_attn.k_proj.weight: shape [32, 64], config.json implies [16, 64]"),
    (lambda t: t.update({"model.norm.weight": torch.zeros(64, dtype=torch.int32)}),
     "model.norm.weight: dtype torch.int32 is not a floating-point weight"),
])
def test_weights_that_do_not_match_the_config_are_named(capsys, hf_copy, tmp_path, edit, message):
    _edit_weights(hf_copy, edit)
    code, err = _import(capsys, hf_copy, tmp_path / "out")
    assert code == 2 and "the weights do not match config.json" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_tied_config_with_a_different_head_is_refused(capsys, hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    (hf_copy / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    code, err = _import(capsys, hf_copy, tmp_path / "out")
    assert code == 2 and "lm_head.weight differs from model.embed_tokens.weight" in err


def test_unsupported_architecture_is_refused(capsys, hf_copy, tmp_path):
    config = json.loads((hf_copy / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    (hf_copy / "config.json").write_text(json.dumps(config))
    code, err = _import(capsys, hf_copy, tmp_path / "out")
    assert code == 2 and "rope_scaling type 'yarn'" in err and not (tmp_path / "out").exists()


def test_failure_midway_leaves_nothing(hf_copy, tmp_path, monkeypatch):
    original, calls = hf_to_megatron.SafetensorsReader.read, []

    def failing_read(self, name):
        calls.append(name)
        if len(calls) == 10:
            raise OSError("disk went away")
        return original(self, name)

    monkeypatch.setattr(hf_to_megatron.SafetensorsReader, "read", failing_read)
    with pytest.raises(OSError, match="disk went away"):
        hf_to_megatron.import_hf_checkpoint(hf_copy, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path / "out")


def test_export_refusals(capsys, hf_models, imported, tmp_path):
    checkpoint = imported["tied"][0]
    no_tokenizer = tmp_path / "empty"
    no_tokenizer.mkdir()
    code, err = _export(capsys, checkpoint, tmp_path / "a", "--tokenizer", no_tokenizer)
    assert code == 2 and "holds no tokenizer" in err
    # A tokenizer with more tokens (512) than the model's vocabulary (256): not this model's tokenizer.
    code, err = _export(capsys, checkpoint, tmp_path / "b", "--tokenizer", hf_models["llama3"])
    assert code == 2 and "the tokenizer has 512 tokens but the model only 256" in err
    assert not (tmp_path / "b").exists() and not _leftovers(tmp_path / "b")
    code, err = _export(capsys, no_tokenizer, tmp_path / "c", "--tokenizer", hf_models["tied"])
    assert code == 2 and "no Megatron checkpoint" in err


def test_export_with_a_mismatched_recipe_names_the_tensor(capsys, hf_models, imported, tmp_path):
    code, err = _export(capsys, imported["llama3"][0], tmp_path / "out", "--tokenizer", hf_models["llama3"],
                        "--recipe", REPO / "recipes/tiny/prolong_stage1.yaml",
                        "--recipe-override", "model.vocab_size=512")
    assert code == 2 and "does not match its model config" in err
    assert "decoder.layers.self_attention.linear_qkv.weight: shape [2, 96, 64], the recipe implies [4, " in err


def test_export_takes_context_length_override(capsys, hf_models, imported, tmp_path):
    code, _ = _export(capsys, imported["llama3"][0], tmp_path / "out", "--tokenizer", hf_models["llama3"],
                      "--max-position-embeddings", "65536")
    assert code == 0
    assert json.loads((tmp_path / "out/config.json").read_text())["max_position_embeddings"] == 65536

