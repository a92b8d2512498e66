"""The real training loop under CPU emulation: learning, exact resume, atomic checkpoints, the
stage handoff, and data/tensor parallelism matching one rank (signals: test_signals.py)."""

import pytest

from train_runner import TINY_CPU, losses, optimizer_format, train


def run(tmp_path, *overrides, env, nproc=1, name="run"):
    return train([*TINY_CPU, *overrides], tmp_path / f"{name}.jsonl", env, nproc)


def test_loss_falls(tmp_path, python_env):
    rc, out, m = run(tmp_path, "train.train_iters=20", "checkpoint.save=null", "checkpoint.save_interval=null",
                     env=python_env)
    assert rc == 0, out
    assert m[-1]["loss"] < m[0]["loss"] - 0.5
    assert all(k in m[-1] for k in ("lr", "grad_norm", "tokens_per_sec_per_gpu", "tflops_per_gpu"))
    assert {"loss/synthetic_0", "loss/synthetic_1"} <= set(m[-1])          # per-domain loss
    assert "tokens/s/GPU" in out and "TFLOP/s/GPU" in out


def test_killed_run_resumes_exactly(tmp_path, python_env):
    common = ["train.train_iters=6", "checkpoint.save_interval=100"]
    rc, out, straight = run(tmp_path, *common, f"checkpoint.save={tmp_path}/a", name="a", env=python_env)
    assert rc == 0, out
    rc, out, first = run(tmp_path, *common, f"checkpoint.save={tmp_path}/b", "train.exit_after_iters=3",
                         name="b", env=python_env)
    assert rc == 3, out                                   # stopped early, checkpoint saved
    assert (tmp_path / "b/latest_checkpointed_iteration.txt").read_text().strip() == "3"
    rc, out, second = run(tmp_path, *common, f"checkpoint.save={tmp_path}/b", name="b", env=python_env)
    assert rc == 0, out
    assert "resumed from" in out and "iteration 3, 12 samples consumed" in out
    assert losses(second) == losses(straight)             # bit-identical continuation
    assert [m["lr"] for m in second] == [m["lr"] for m in straight]


def test_half_written_checkpoint_is_never_resumed(tmp_path, python_env):
    rc, out, _ = run(tmp_path, "train.train_iters=2", f"checkpoint.save={tmp_path}/ck", env=python_env)
    assert rc == 0, out
    # A save that crashed mid-way leaves only an incomplete directory behind...
    crashed = tmp_path / "ck/.incomplete_iter_0000004"
    crashed.mkdir()
    (crashed / "__0_0.distcp").write_bytes(b"partial")
    rc, out, m = run(tmp_path, "train.train_iters=3", f"checkpoint.save={tmp_path}/ck", name="r", env=python_env)
    assert rc == 0, out
    assert "resumed from" in out and "iter_0000002" in out and [it for it, _ in losses(m)] == [3]
    # ...and a tracker naming a checkpoint that is not complete is an error, not a silent restart.
    (tmp_path / "ck/latest_checkpointed_iteration.txt").write_text("9\n")
    rc, out, _ = run(tmp_path, "train.train_iters=12", f"checkpoint.save={tmp_path}/ck", name="bad", env=python_env)
    assert rc != 0 and "is not a complete checkpoint" in out


def test_stage_handoff_resets_schedule_and_optionally_keeps_optimizer(tmp_path, python_env):
    rc, out, _ = run(tmp_path, "train.train_iters=4", f"checkpoint.save={tmp_path}/stage1", name="s1",
                     env=python_env)
    assert rc == 0, out
    # No warmup: the first update already uses the carried-over (or fresh) Adam moments.
    stage2 = ["train.train_iters=3", "model.rotary_base=1.28e8", "train.seq_length=512", "train.global_batch_size=2",
              "scheduler.lr_warmup_fraction=null", "optimizer.lr=5e-4", "optimizer.min_lr=5e-5",
              f"checkpoint.pretrained_checkpoint={tmp_path}/stage1"]
    rc, out, with_optim = run(tmp_path, *stage2, "checkpoint.pretrained_load_optim=true",
                              f"checkpoint.save={tmp_path}/s2a", name="s2a", env=python_env)
    assert rc == 0, out
    assert "weights and optimizer state" in out and "iteration and LR schedule start over" in out
    rc, out, without = run(tmp_path, *stage2, f"checkpoint.save={tmp_path}/s2b", name="s2b", env=python_env)
    assert rc == 0 and "weights only" in out, out
    assert [it for it, _ in losses(with_optim)] == [1, 2, 3]                  # iteration reset
    assert with_optim[0]["lr"] == without[0]["lr"] < 5e-4                      # stage 2's own cosine schedule
    assert with_optim[0]["loss"] == without[0]["loss"]                         # same stage-1 weights
    assert with_optim[1]["loss"] != without[1]["loss"]                         # Adam moments carried over
    # A stage-2 requeue resumes stage 2 rather than re-initializing from stage 1.
    rc, out, _ = run(tmp_path, *stage2, "train.train_iters=4", f"checkpoint.save={tmp_path}/s2a", name="s2a2",
                     env=python_env)
    assert rc == 0 and "resumed from" in out and "iteration 3" in out


def test_missing_pretrained_checkpoint_is_an_error(tmp_path, python_env):
    rc, out, _ = run(tmp_path, "train.train_iters=2", f"checkpoint.pretrained_checkpoint={tmp_path}/nothing-here",
                     f"checkpoint.save={tmp_path}/ck", name="missing", env=python_env)
    assert rc != 0 and "checkpoint.pretrained_checkpoint: no checkpoint at" in out


def test_preflight_reports_the_plan_and_trains_nothing(tmp_path, python_env):
    # A chained stage's preflight runs before the previous stage has written its checkpoint.
    rc, out, m = run(tmp_path, "train.preflight=true", f"checkpoint.pretrained_checkpoint={tmp_path}/stage1",
                     f"checkpoint.save={tmp_path}/ck", name="preflight", env=python_env)
    assert rc == 0, out
    assert "PREFLIGHT ONLY" in out and "NO CHECKPOINT THERE YET" in out and "rendezvous ok" in out
    assert m == [] and not (tmp_path / "ck").exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["parallel.use_distributed_optimizer=true"],
                                    ["model.num_query_groups=2", "parallel.tensor_model_parallel_size=2",
                                     "parallel.sequence_parallel=false"]],
                         ids=["dp2", "tp2"])
def test_two_ranks_match_one_rank(tmp_path, python_env, layout):
    common = ["train.train_iters=3", "checkpoint.save=null", "checkpoint.save_interval=null", "model.num_query_groups=2"]
    rc, out, one = run(tmp_path, *common, name="one", env=python_env)
    assert rc == 0, out
    rc, out, two = run(tmp_path, *common, *layout, name="two", env=python_env, nproc=2)
    assert rc == 0, out
    for (it1, l1), (it2, l2) in zip(losses(one), losses(two)):
        assert it1 == it2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-5)


TP2 = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=false"]


@pytest.mark.slow
def test_last_save_hands_the_optimizer_state_to_another_tensor_parallel_size(tmp_path, python_env):
    """Periodic saves keep each rank's optimizer shard as it is (fast); the last one is fully
    reshardable, so the next stage can load the Adam moments at another layout."""
    common = ["model.num_query_groups=2", "train.train_iters=4", "checkpoint.save_interval=2"]
    rc, out, _ = run(tmp_path, *common, *TP2, f"checkpoint.save={tmp_path}/tp2", name="tp2", env=python_env, nproc=2)
    assert rc == 0, out
    assert optimizer_format(tmp_path / "tp2/iter_0000002") == "dp_reshardable"
    assert optimizer_format(tmp_path / "tp2/iter_0000004") == "fully_reshardable"
    # Iteration 2's optimizer state cannot move to TP 1: one line naming the key, before the model is built.
    rc, out, m = run(tmp_path, *common, "checkpoint.ckpt_step=2", f"checkpoint.load={tmp_path}/tp2",
                     f"checkpoint.save={tmp_path}/tp1", name="refused", env=python_env)
    assert rc != 0 and m == [], out
    assert "parallel.tensor_model_parallel_size 2 -> 1" in out and "fully reshardable save" in out, out
    # The reference: the same run saving each rank's shard as it is, handed over at TP 2.
    rc, out, _ = run(tmp_path, *common, *TP2, "checkpoint.dist_ckpt_optim_fully_reshardable=never",
                     f"checkpoint.save={tmp_path}/tp2_never", name="tp2_never", env=python_env, nproc=2)
    assert rc == 0 and optimizer_format(tmp_path / "tp2_never/iter_0000004") == "dp_reshardable", out
    # The last save hands weights and Adam moments over at TP 1 exactly as that one does at TP 2.
    stage2 = ["model.num_query_groups=2", "train.train_iters=3", "scheduler.lr_warmup_fraction=null",
              "checkpoint.save=null", "checkpoint.save_interval=null"]
    rc, out, at_tp1 = run(tmp_path, *stage2, f"checkpoint.pretrained_checkpoint={tmp_path}/tp2",
                          "checkpoint.pretrained_load_optim=true", name="h1", env=python_env)
    assert rc == 0 and "weights and optimizer state" in out, out
    rc, out, at_tp2 = run(tmp_path, *stage2, *TP2, f"checkpoint.pretrained_checkpoint={tmp_path}/tp2_never",
                          "checkpoint.pretrained_load_optim=true", name="h2", env=python_env, nproc=2)
    assert rc == 0, out
    # From a per-rank save, a handoff at another TP takes the weights only (refused with the moments).
    rc, out, m = run(tmp_path, *stage2, f"checkpoint.pretrained_checkpoint={tmp_path}/tp2_never",
                     "checkpoint.pretrained_load_optim=true", name="h_refused", env=python_env)
    assert rc != 0 and m == [] and "checkpoint.pretrained_load_optim=false" in out, out
    rc, out, fresh_moments = run(tmp_path, *stage2, f"checkpoint.pretrained_checkpoint={tmp_path}/tp2_never",
                                 name="h0", env=python_env)
    assert rc == 0 and "weights only" in out, out
    assert len(at_tp1) == len(at_tp2) == 3
    for (it1, l1), (it2, l2) in zip(losses(at_tp1), losses(at_tp2)):
        assert it1 == it2 and l1 == pytest.approx(l2, rel=1e-5, abs=1e-5)
    assert at_tp1[0]["loss"] == pytest.approx(fresh_moments[0]["loss"], rel=1e-5)  # the same weights...
    assert at_tp1[1]["loss"] != pytest.approx(fresh_moments[1]["loss"], rel=1e-4)  # ...and the moments carried over


@pytest.mark.slow
def test_periodic_save_resumes_at_another_data_parallel_size_not_other_buckets(tmp_path, python_env):
    common = ["train.train_iters=4", "checkpoint.save_interval=100"]
    rc, out, straight = run(tmp_path, *common, f"checkpoint.save={tmp_path}/a", name="a", env=python_env)
    assert rc == 0, out
    rc, out, _ = run(tmp_path, *common, f"checkpoint.save={tmp_path}/b", "train.exit_after_iters=2", name="b",
                     env=python_env)
    assert rc == 3 and optimizer_format(tmp_path / "b/iter_0000002") == "dp_reshardable", out
    # Without overlapped reduction the gradients form one bucket: other buffers for models over one
    # bucket's 40M parameters (not this one; the rule does not count parameters), refused by name.
    rc, out, m = run(tmp_path, *common, f"checkpoint.save={tmp_path}/b", "parallel.overlap_grad_reduce=false",
                     name="b1", env=python_env)
    assert rc != 0 and m == [] and "parallel.overlap_grad_reduce True -> False" in out, out
    # A regular optimizer cannot take a distributed one's state, whatever its format.
    rc, out, m = run(tmp_path, *common, "train.train_iters=5", f"checkpoint.save={tmp_path}/a",
                     "parallel.use_distributed_optimizer=false", name="a1", env=python_env)
    assert rc != 0 and m == [] and "parallel.use_distributed_optimizer True -> False" in out, out
    assert "fully reshardable" not in out, out  # (that would not help)
    rc, out, resumed = run(tmp_path, *common, f"checkpoint.save={tmp_path}/b", name="b2", env=python_env, nproc=2)
    assert rc == 0 and "resumed from" in out, out
    assert [it for it, _ in losses(resumed)] == [3, 4]
    for (_, l1), (_, l2) in zip(losses(resumed), losses(straight)[2:]):
        assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-5)
