"""Imported checkpoints in Megatron's GPTModel (CPU emulation, fp32, local layer spec).

Proves the mapping rather than its self-consistency: Megatron's logits equal transformers'
on the same tokens, at TP=1 and TP=2; checkpoints the training Checkpointer writes at TP=2
(distributed optimizer) export bit-exactly; and after real training steps (2 data-parallel
ranks) the export's HF logits equal Megatron's again.
"""

import dataclasses

import pytest
import torch
from convert_fixtures import hf_state, run_worker, worker_case

from megatron_ext.convert import export_hf_checkpoint
from megatron_ext.convert.dist_checkpoint_io import DistCheckpointReader
from megatron_ext.convert.megatron_to_hf import locate_checkpoint, model_config_from_checkpoint
from megatron_ext.convert.reference_models import TINY_CONFIGS, random_tokens
from megatron_ext.convert.verify import compare_logits, finetune_overrides, hf_logits

# fp32 on both sides; what remains is summation order (RoPE tables, softmax, matmuls).
FP32_MAX_ABS_DIFF = 1e-4
pytestmark = pytest.mark.slow


def _assert_same_logits(reference, candidate, what):
    result = compare_logits(reference, candidate)
    assert result.max_abs_diff < FP32_MAX_ABS_DIFF and result.top1_agreement == 1.0, f"{what}: {result}"


def _tokens_file(tmp_path, name):
    path = tmp_path / f"{name}_tokens.pt"
    torch.save(random_tokens(TINY_CONFIGS[name]["vocab_size"]), path)
    return path


def test_megatron_logits_match_transformers_at_tp1(hf_models, imported, tmp_path, python_env):
    cases = [worker_case(*imported[name], _tokens_file(tmp_path, name), tmp_path / f"{name}.pt")
             for name in TINY_CONFIGS]
    run_worker({"tensor_parallel": 1, "cases": cases}, tmp_path / "job.json", python_env)
    for name in TINY_CONFIGS:
        tokens = torch.load(tmp_path / f"{name}_tokens.pt")
        _assert_same_logits(hf_logits(hf_models[name], tokens, torch.float32), torch.load(tmp_path / f"{name}.pt"),
                            name)


def test_tp2_model_matches_and_its_checkpoint_round_trips(hf_models, imported, tmp_path, python_env):
    cases = [worker_case(*imported[name], _tokens_file(tmp_path, name), tmp_path / f"{name}.pt",
                         save=tmp_path / f"{name}_tp2") for name in TINY_CONFIGS]
    run_worker({"tensor_parallel": 2, "cases": cases}, tmp_path / "job.json", python_env, nproc=2)
    for name in TINY_CONFIGS:
        tokens = torch.load(tmp_path / f"{name}_tokens.pt")
        _assert_same_logits(hf_logits(hf_models[name], tokens, torch.float32), torch.load(tmp_path / f"{name}.pt"),
                            name)
        # Saved by the training Checkpointer at TP=2 with the distributed optimizer.
        source = hf_state(hf_models[name])
        dtype = next(iter(source.values())).dtype
        out = export_hf_checkpoint(tmp_path / f"{name}_tp2", tmp_path / f"{name}_hf", hf_models[name], dtype=dtype,
                                   progress=False).output
        exported = hf_state(out)
        assert sorted(exported) == sorted(source)
        assert all(torch.equal(exported[key], tensor) for key, tensor in source.items()), name


# The tiny stage-1 recipe on CPU, 2 ranks data-parallel (distributed optimizer sharded over
# them, each rank writing part of the checkpoint), from the imported weights. (The TP=2 layout
# is covered above: the same Checkpointer.save.)
TRAIN_CPU = ["recipes/tiny/prolong_stage1.yaml", "train.device=cpu", "precision.bf16=false", "train.seq_length=64",
             "train.global_batch_size=2", "train.train_iters=3", "data.num_workers=0", "data.synthetic.vocab_size=null",
             "logging.tensorboard_dir=null", "logging.progress_bar=false", "parallel.tensor_model_parallel_size=1"]


def test_export_after_training_matches_megatron(hf_models, imported, tmp_path, python_env):
    from train_runner import train

    name = "llama3"
    checkpoint, model = imported[name]
    rc, out, metrics = train([*TRAIN_CPU, *finetune_overrides(model, checkpoint, tmp_path / "trained")],
                             tmp_path / "m.jsonl", python_env, nproc=2, timeout=600)
    assert rc == 0, out
    assert "initialized from" in out and len(metrics) == 3

    trained = locate_checkpoint(tmp_path / "trained")
    assert len(list(trained.glob("*.distcp"))) == 2  # both DP ranks wrote a share
    stored = model_config_from_checkpoint(DistCheckpointReader(trained).common_state(), trained)
    exported = export_hf_checkpoint(tmp_path / "trained", tmp_path / "hf", hf_models[name], dtype=torch.float32,
                                    progress=False)
    assert exported.architecture.rope_theta == 8.0e6 and exported.architecture.max_position_embeddings == 16384

    tokens_file = _tokens_file(tmp_path, name)
    run_worker({"tensor_parallel": 1, "cases": [worker_case(trained, dataclasses.asdict(stored), tokens_file,
                                                            tmp_path / "trained.pt")]},
               tmp_path / "job.json", python_env)
    tokens = torch.load(tokens_file)
    exported_logits = hf_logits(exported.output, tokens, torch.float32)
    _assert_same_logits(exported_logits, torch.load(tmp_path / "trained.pt"), "trained")
    # Training moved the weights: the export is not the original model.
    assert compare_logits(hf_logits(hf_models[name], tokens, torch.float32), exported_logits).max_abs_diff > 1e-3
