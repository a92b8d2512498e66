"""Bad input gets a clear message (exit code 2) and never leaves or destroys anything."""

import json
import os
import pickle
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



# -- damaged, crafted and foreign Megatron checkpoints ------------------------------------
@pytest.fixture
def megatron_copy(imported, tmp_path):
    """A writable copy of the imported Llama-3-like checkpoint (its manifest included)."""
    return shutil.copytree(imported["llama3"][0], tmp_path / "megatron")


def _flip_bits(path):
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        data = f.read(64)
        f.seek(-64, 1)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("manifest", [True, False], ids=["with-manifest", "without-manifest"])
@pytest.mark.parametrize("damage, message", [
    (lambda c: (c / "__0_0.distcp").unlink(), "__0_0.distcp is missing"),
    (lambda c: os.truncate(c / "__0_0.distcp", 1000), "__0_0.distcp "),
    (lambda c: (c / ".metadata").unlink(), ".metadata is missing"),
], ids=["missing-shard", "truncated-shard", "missing-metadata"])
def test_damaged_checkpoints_are_refused_in_one_line(capsys, hf_models, megatron_copy, tmp_path, damage, message,
                                                     manifest):
    if not manifest:
        (megatron_copy / "manifest.json").unlink()
    damage(megatron_copy)
    code, err = _export(capsys, megatron_copy, tmp_path / "out", "--tokenizer", hf_models["llama3"])
    assert code == 2 and err.count("\n") == 1 and f"{megatron_copy}/{message}" in err, err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path / "out")


def test_flipped_bits_are_refused_unless_verification_is_skipped(capsys, hf_models, megatron_copy, tmp_path):
    _flip_bits(megatron_copy / "__0_0.distcp")
    code, err = _export(capsys, megatron_copy, tmp_path / "out", "--tokenizer", hf_models["llama3"])
    assert code == 2 and f"{megatron_copy}/__0_0.distcp: checksum mismatch" in err
    code = cli.export_main([str(megatron_copy), str(tmp_path / "out"), "--tokenizer", str(hf_models["llama3"]),
                            "--no-progress", "--no-verify-checksums"])
    assert code == 0 and "checksums not verified (--no-verify-checksums)" in capsys.readouterr().out


class _RunsShell:
    """Unpickling this runs a shell command: what a crafted checkpoint carries."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_crafted_checkpoints_run_no_code(capsys, hf_models, megatron_copy, tmp_path):
    from megatron_ext.convert.dist_checkpoint_io import sharded_object_key, write_dist_checkpoint

    marker = tmp_path / "pwned"
    (megatron_copy / "manifest.json").unlink()
    (megatron_copy / ".metadata").write_bytes(pickle.dumps(_RunsShell(f"touch {marker}")))
    code, err = _export(capsys, megatron_copy, tmp_path / "a", "--tokenizer", hf_models["llama3"])
    assert code == 2 and f"{megatron_copy}/.metadata: refused to unpickle posix.system" in err
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    write_dist_checkpoint(crafted, [], {sharded_object_key("common_state"): _RunsShell(f"touch {marker}")})
    code, err = _export(capsys, crafted, tmp_path / "b", "--tokenizer", hf_models["llama3"])
    assert code == 2 and "stored object common_state" in err and "refused to unpickle posix.system" in err
    assert not marker.exists()


def test_a_foreign_tokenizer_is_refused_before_anything_is_written(capsys, hf_models, imported, tmp_path,
                                                                   monkeypatch):
    from megatron_ext.convert import megatron_to_hf

    def staging(output):
        raise AssertionError("the tokenizer must be checked before the output is staged")

    monkeypatch.setattr(megatron_to_hf, "staged_output_dir", staging)
    code, err = _export(capsys, imported["tied"][0], tmp_path / "out", "--tokenizer", hf_models["llama3"])
    assert code == 2 and "the tokenizer has 512 tokens but the model only 256" in err


def test_staging_directories_of_dead_conversions_are_removed(capsys, hf_copy, tmp_path):
    import subprocess
    import sys

    from megatron_ext.processes import this_host

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        stale = [tmp_path / f".out.incomplete-{this_host()}-{gone.pid}", tmp_path / f".out.incomplete-{gone.pid}"]
        kept = [tmp_path / f".out.incomplete-{this_host()}-{running.pid}",
                tmp_path / f".out.replaced-other-node-{gone.pid}"]  # another host's: cannot be checked
        for path in stale + kept:
            path.mkdir()
        assert _import(capsys, hf_copy, tmp_path / "out")[0] == 0
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    finally:
        running.kill()


@pytest.mark.parametrize("args", [["--help"], ["/no/such/checkpoint", "/tmp/out", "--tokenizer", "/no/tokenizer"]],
                         ids=["help", "bad-input"])
def test_the_tools_answer_before_importing_torch(args, python_env):
    import subprocess
    import sys

    script = ("import sys\nfrom megatron_ext.convert import cli\ntry:\n    code = cli.export_main(sys.argv[1:])\n"
              "except SystemExit as e:\n    code = e.code\nassert 'torch' not in sys.modules, 'torch was imported'\n"
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *args], env=python_env, capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == (0 if args == ["--help"] else 2), done.stderr
