"""GPU checks on 2+ GPUs: CP/TP parity with one GPU, and resuming across a layout change.

    GPU_RESULTS_DIR=out python -m pytest -m gpu tests/gpu/test_multi_gpu.py
"""

import json
import shutil
import subprocess

import pytest
import torch

from megatron_ext.net import free_port
from train_runner import REPO, losses, optimizer_format, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]

QUIET = ["logging.progress_bar=false", "logging.tensorboard_dir=null"]
COMM_TYPES = ["p2p", "a2a", "all_gather", "a2a+p2p"]
# Tolerances, fixed before measuring (bf16; CP/TP change summation orders only).
LOSS_RTOL, GRAD_RTOL = 2e-3, 3e-2


@pytest.fixture(scope="module")
def parity(results, env):
    n = 2
    proc = subprocess.run(["torchrun", f"--nproc-per-node={n}", f"--master-port={free_port()}",
                           "tests/gpu/check_parallel_parity.py", "--out", str(results), "--cp", str(n), "--tp", str(n)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (results / "parallel_parity.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return json.loads((results / f"parallel_parity_cp{n}_tp{n}.json").read_text())


@pytest.mark.parametrize("comm", COMM_TYPES)
def test_context_parallel_matches_one_gpu(parity, comm):
    r = parity["cp"][comm]
    assert r["loss_rel_diff"] < LOSS_RTOL and r["grad_rel_l2_max"] < GRAD_RTOL, r


def test_tensor_parallel_matches_one_gpu(parity):
    r = parity["tp"]
    assert r["loss_rel_diff"] < LOSS_RTOL and r["grad_norm_rel_diff_max"] < GRAD_RTOL, r


def test_resume_and_handoff_at_cp1_from_a_cp2_run(results, env):
    common = ["recipes/tiny/prolong_stage1.yaml", *QUIET, "train.train_iters=6", "checkpoint.save_interval=3",
              "parallel.cp_comm_type=a2a"]
    rc, out, cp2 = train([*common, "parallel.context_parallel_size=2", f"checkpoint.save={results}/ck/cp2"],
                         results / "layout_cp2.jsonl", env, nproc=2)
    assert rc == 0, out[-4000:]
    resumed_dir = results / "ck/cp2_resumed_at_cp1"
    shutil.copytree(results / "ck/cp2", resumed_dir)
    shutil.rmtree(resumed_dir / "iter_0000006")
    (resumed_dir / "latest_checkpointed_iteration.txt").write_text("3\n")
    rc, out, cp1 = train([*common, f"checkpoint.save={resumed_dir}"], results / "layout_cp1.jsonl", env)
    assert rc == 0 and "resumed from" in out and "layout changed" in out, out[-4000:]
    pairs = list(zip(losses(cp2)[3:], losses(cp1)))
    rel = [abs(a[1] - b[1]) / a[1] for a, b in pairs]
    (results / "layout_change.json").write_text(json.dumps({"cp2": losses(cp2), "cp1_resumed": losses(cp1),
                                                            "max_rel_diff": max(rel)}, indent=2))
    assert [a[0] for a, _ in pairs] == [b[0] for _, b in pairs] == [4, 5, 6]
    assert max(rel) < LOSS_RTOL
    # Iteration 3 held each rank's optimizer shard as it is; the last save is fully reshardable
    # and hands its Adam moments over at CP 1 (the stage handoff's path).
    assert optimizer_format(results / "ck/cp2/iter_0000003") == "dp_reshardable"
    assert optimizer_format(results / "ck/cp2/iter_0000006") == "fully_reshardable"
    handoff = [*common, "checkpoint.save=null", "checkpoint.save_interval=null", "train.train_iters=2",
               "scheduler.lr_warmup_fraction=null", f"checkpoint.pretrained_checkpoint={results}/ck/cp2"]
    rc, out, moments = train([*handoff, "checkpoint.pretrained_load_optim=true"], results / "handoff_cp1.jsonl", env)
    assert rc == 0 and "weights and optimizer state" in out, out[-4000:]
    rc, out, fresh = train(handoff, results / "handoff_cp1_weights_only.jsonl", env)
    assert rc == 0 and "weights only" in out, out[-4000:]
    assert abs(moments[0]["loss"] - fresh[0]["loss"]) < LOSS_RTOL * fresh[0]["loss"]   # the same weights
    assert abs(moments[1]["loss"] - fresh[1]["loss"]) > 1e-4 * fresh[1]["loss"]         # the moments carried over


def test_ring_attention_trains_like_a2a(results, env):
    """The training path with p2p (padding-gradient fix installed by the model builder) follows a2a."""
    common = ["recipes/tiny/prolong_stage1.yaml", *QUIET, "train.train_iters=8", "checkpoint.save_interval=null",
              "parallel.context_parallel_size=2"]
    runs = {}
    for comm in ("a2a", "p2p"):
        rc, out, metrics = train([*common, f"parallel.cp_comm_type={comm}", f"checkpoint.save={results}/ck/ring_{comm}"],
                                 results / f"ring_{comm}.jsonl", env, nproc=2)
        assert rc == 0, out[-4000:]
        runs[comm] = losses(metrics)
    rel = [abs(a[1] - b[1]) / a[1] for a, b in zip(runs["a2a"], runs["p2p"])]
    (results / "ring_vs_a2a.json").write_text(json.dumps({**runs, "max_rel_diff": max(rel)}, indent=2))
    assert [i for i, _ in runs["a2a"]] == [i for i, _ in runs["p2p"]] == list(range(1, 9))
    assert max(rel) < LOSS_RTOL


def test_tp_overlap_uses_no_nvlink_multicast_and_trains_like_no_overlap(results, env):
    """Hosts that switch NVLink multicast off (NCCL_NVLS_ENABLE=0, as the device hosts must) got
    it from TE's userbuffers anyway ("MC initialized" in the stage-1 TP-overlap logs). With TE's
    userbuffer settings and with ours, the overlap now runs without it, like the run without."""
    common = ["recipes/tiny/prolong_stage1.yaml", *QUIET, "train.train_iters=4", "checkpoint.save=null",
              "checkpoint.save_interval=null", "parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true",
              "model.num_query_groups=2"]
    env = {k: v for k, v in env.items() if k != "UB_SKIPMC"} | {"NCCL_NVLS_ENABLE": "0"}
    overlap = ["parallel.tp_comm_overlap=true"]
    variants = {"no_overlap": [], "te_settings": overlap,
                "rs_rings": [*overlap, "parallel.tp_comm_overlap_cfg=benchmarks/userbuffers/tp2_rs_rings.yaml"]}
    runs = {}
    for name, overrides in variants.items():
        rc, out, metrics = train([*common, *overrides], results / f"tp_overlap_{name}.jsonl", env, nproc=2)
        (results / f"tp_overlap_{name}.log").write_text(out)
        assert rc == 0, out[-4000:]
        assert "MC initialized" not in out
        if overrides:  # TE's userbuffers started, and said so
            assert "MC NOT initialized and used" in out, out[-4000:]
        runs[name] = losses(metrics)
    rel = {name: max(abs(a[1] - b[1]) / a[1] for a, b in zip(runs["no_overlap"], run)) for name, run in runs.items()}
    (results / "tp_overlap.json").write_text(json.dumps({**runs, "max_rel_diff": rel}, indent=2))
    assert all(len(run) == 4 for run in runs.values())
    assert max(rel.values()) < LOSS_RTOL
