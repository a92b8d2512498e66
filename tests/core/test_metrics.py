"""Model FLOPs with document masking, MFU, and the metric logger."""

import pytest

from megatron_ext.config import load_recipe
from megatron_ext.training.metrics import FlopsModel, peak_tflops

LLAMA3_8B = "recipes/prolong/stage1_64k.yaml"


def test_llama3_8b_dense_flops_per_token():
    f = FlopsModel.from_recipe(load_recipe(LLAMA3_8B))
    # 6 N per training token with N = 8.03e9 parameters minus the input embedding (0.53e9)
    assert 3 * f.gemm_per_token == pytest.approx(6 * (8.03e9 - 128256 * 4096), rel=0.01)
    assert f.attention_per_pair == 32 * 4 * 4096


def test_document_masking_counts_sum_of_squares():
    f = FlopsModel.from_recipe(load_recipe(LLAMA3_8B))
    one_doc = f.training_flops([65536])
    packed = f.training_flops([1024] * 64)
    dense = 3 * f.gemm_per_token * 65536
    assert one_doc - dense == pytest.approx(3 * f.attention_per_pair * 65536 * 65537 / 2)
    # same tokens, 64 short documents: attention FLOPs shrink 64-fold
    assert (packed - dense) == pytest.approx((one_doc - dense) / 64, rel=0.02)


def test_peak_lookup_and_override():
    r = load_recipe(LLAMA3_8B)
    assert peak_tflops(r, "NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops(r, "cpu") is None
    assert peak_tflops(load_recipe(LLAMA3_8B, ["logging.peak_tflops=500"]), "cpu") == 500


def test_a_failing_tensorboard_is_switched_off_and_the_run_goes_on(tmp_path, capsys):
    from megatron_ext.training.metrics import MetricLogger

    recipe = load_recipe("recipes/tiny/prolong_stage1.yaml",
                         [f"logging.tensorboard_dir={tmp_path}/tb", "logging.progress_bar=false"])
    logger = MetricLogger(recipe, world_size=1, is_logger=True, device_name="cpu", domain_names=["a"])

    class FullDisk:
        def add_scalar(self, *args):
            raise OSError(28, "No space left on device")

    logger.writer = FullDisk()
    logger.step(1, tokens=10, flops=1e9, loss=2.0, domain_loss={}, lr=1e-3, grad_norm=1.0, max_memory_gib=0, max_reserved_gib=0)
    logger.step(2, tokens=10, flops=1e9, loss=1.9, domain_loss={}, lr=1e-3, grad_norm=1.0, max_memory_gib=0, max_reserved_gib=0)
    out = capsys.readouterr().out
    assert "WARNING: TensorBoard switched off" in out and "No space left on device" in out
    assert logger.writer is None and "iter 2/" in out


def test_a_failing_metrics_file_is_switched_off_and_the_run_goes_on(capsys):
    from megatron_ext.training.metrics import MetricLogger

    recipe = load_recipe("recipes/tiny/prolong_stage1.yaml", ["logging.metrics_jsonl=/dev/full", "logging.progress_bar=false"])
    logger = MetricLogger(recipe, world_size=1, is_logger=True, device_name="cpu", domain_names=["a"])
    for iteration in (1, 2):
        logger.step(iteration, tokens=10, flops=1e9, loss=2.0, domain_loss={}, lr=1e-3, grad_norm=1.0, max_memory_gib=0, max_reserved_gib=0)
    out = capsys.readouterr().out
    assert out.count("WARNING: logging.metrics_jsonl switched off: writing to /dev/full failed") == 1, out
    assert "No space left on device" in out and "iter 2/" in out
