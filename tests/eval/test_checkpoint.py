import json
import shutil
import warnings

import pytest
from eval_helpers import load_tool

from megatron_ext.eval.checkpoint import CheckpointError, check_lengths, inspect_checkpoint

eval_cli = load_tool("eval")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        inspect_checkpoint(tmp_path / "nope")


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="not a Hugging Face checkpoint directory.*GGUF or Megatron"):
        inspect_checkpoint(tmp_path)


def test_config_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="no weights"):
        inspect_checkpoint(tmp_path)


def test_missing_tokenizer_and_explicit_tokenizer(tiny_llama, tmp_path):
    ckpt = tmp_path / "no_tok"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, ckpt / name)
    with pytest.raises(CheckpointError, match="no tokenizer in the checkpoint directory"):
        inspect_checkpoint(ckpt)
    info = inspect_checkpoint(ckpt, tokenizer=tiny_llama)
    assert info.tokenizer_path == tiny_llama
    assert info.max_position_embeddings == 2048


def test_lengths_beyond_max_position_refused_unless_allowed():
    with pytest.raises(CheckpointError, match="exceed the model's max_position_embeddings=8192"):
        check_lengths([4096, 16384], 8192, allow_beyond=False)
    with pytest.warns(UserWarning, match="beyond max_position_embeddings=8192"):
        assert check_lengths([4096, 16384], 8192, allow_beyond=True) == [16384]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_lengths([4096, 8192], 8192, allow_beyond=False) == []
    with pytest.raises(CheckpointError, match="positive"):
        check_lengths([0], 8192, allow_beyond=False)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert eval_cli.main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_long_lengths_and_keeps_existing_results(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_cli.main([str(tiny_llama), "--out", str(out), "--lengths", "1K,4K"]) == 2
    assert "--allow-beyond-max-position" in capsys.readouterr().err

    out.mkdir()
    (out / "results.json").write_text("precious")
    assert eval_cli.main([str(tiny_llama), "--out", str(out), "--lengths", "1K"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "precious"


def test_parse_length():
    assert [eval_cli.parse_length(x) for x in ("4096", "4K", "128k", "0.5K", "1M")] == [4096, 4096, 131072, 512, 1048576]
    with pytest.raises(Exception, match="not a length"):
        eval_cli.parse_length("long")


def test_cli_rejects_unusable_tasks_and_lengths(tiny_llama, tmp_path, capsys):
    base = [str(tiny_llama), "--out", str(tmp_path / "out"), "--backend", "native", "--short-tasks", "none"]
    assert eval_cli.main([*base, "--lengths", "256"]) == 2
    assert "too short" in capsys.readouterr().err
    assert eval_cli.main([*base, "--lengths", "1K", "--tasks", "local_niah_single,ruler_vt"]) == 2
    assert "need lm-eval" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
