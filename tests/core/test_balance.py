"""Data-parallel load balancing: the same samples per global batch, better balance on the
ProLong length mix, exact resume, and (CPU, DP=2) the same losses as without it."""

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from megatron_ext.config import load_recipe
from megatron_ext.training.loader import build_dataset, sample_cost
from megatron_ext.data.sampler import DataParallelSampler, balanced_assignment
from train_runner import losses, train

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def prolong_mix():
    """(dataset, cost) of the stage-1 benchmark: 60% single 64K documents, 40% packed short ones."""
    recipe = load_recipe(RECIPES / "bench/llama3_8b_64k.yaml")
    dataset = build_dataset(recipe)
    return dataset, lru_cache(maxsize=None)(sample_cost(recipe, dataset))


def _rank_loads(dataset, cost, gbs, dp, first, balanced):
    samplers = [DataParallelSampler(len(dataset), 0, 1, gbs, r, dp, cost if balanced else None) for r in range(dp)]
    per_rank = [s.rank_samples(first) for s in samplers]
    return per_rank, [sum(cost(i) for i in samples) for samples in per_rank]


@pytest.mark.parametrize("dp", [2, 4, 8])
def test_same_samples_per_batch_and_better_balance(prolong_mix, dp):
    dataset, cost = prolong_mix
    gbs, batches = 64, 12
    imbalance = {True: [], False: []}
    for b in range(batches):
        for balanced in (True, False):
            per_rank, loads = _rank_loads(dataset, cost, gbs, dp, b * gbs, balanced)
            assert sorted(i for samples in per_rank for i in samples) == list(range(b * gbs, (b + 1) * gbs))
            assert all(len(samples) == gbs // dp for samples in per_rank)
            imbalance[balanced].append(max(loads) / np.mean(loads))
    in_order, balanced = np.mean(imbalance[False]), np.mean(imbalance[True])
    # In Megatron's order the slowest rank does 3-14% more work than the mean here; balanced
    # it is within 0.1-3% (the costs are lumpy: a 64K document is ~40% of a rank's work at DP=8).
    assert balanced < in_order - 0.02
    assert balanced < {2: 1.002, 4: 1.015, 8: 1.05}[dp]


def test_micro_batch_slots_hold_comparable_work(prolong_mix):
    dataset, cost = prolong_mix
    per_rank, _ = _rank_loads(dataset, cost, 64, 2, 0, balanced=True)
    for samples in per_rank:  # each rank runs its most costly samples first
        assert [cost(i) for i in samples] == sorted((cost(i) for i in samples), reverse=True)


def test_balanced_sampler_resumes_exactly(prolong_mix):
    dataset, cost = prolong_mix

    def read(consumed, micro_batches):
        it = iter(DataParallelSampler(len(dataset), consumed, 2, 16, 1, 2, cost))
        return [next(it) for _ in range(micro_batches)]

    straight = read(0, 4 * 4)                  # 4 global batches of 4 micro-batches per rank
    assert read(2 * 16, 2 * 4) == straight[8:]  # resumed after 2 batches: the same micro-batches


def test_one_rank_keeps_megatron_order(prolong_mix):
    dataset, cost = prolong_mix
    plain = DataParallelSampler(len(dataset), 0, 2, 8, 0, 1)
    assert DataParallelSampler(len(dataset), 0, 2, 8, 0, 1, cost).rank_samples(8) == plain.rank_samples(8) == list(range(8, 16))


def test_assignment_on_a_known_case():
    # One heavy sample: it goes alone with the lightest ones; counts stay equal.
    costs = [100, 1, 1, 1, 30, 30, 30, 5]
    ranks = balanced_assignment(costs, 2)
    assert sorted(len(r) for r in ranks) == [4, 4]
    assert sorted(sum(costs[i] for i in r) for r in ranks) == [95, 103]  # the optimum
    assert balanced_assignment(costs, 2) == ranks  # deterministic
    with pytest.raises(ValueError, match="evenly"):
        balanced_assignment(costs, 3)


TINY_DP2 = ["recipes/tiny/prolong_stage1.yaml", "train.device=cpu", "precision.bf16=false", "train.seq_length=256",
            "train.global_batch_size=4", "model.vocab_size=512", "data.synthetic.vocab_size=null",
            "data.num_workers=0", "logging.tensorboard_dir=null", "logging.progress_bar=false",
            "train.train_iters=6", "checkpoint.save_interval=100"]


def test_tiny_recipe_batches_are_actually_rebalanced():
    """Guards the CPU test below against being vacuous: balancing moves samples between ranks."""
    recipe = load_recipe(TINY_DP2[0], TINY_DP2[1:])
    dataset = build_dataset(recipe)
    cost = sample_cost(recipe, dataset)
    moved = [DataParallelSampler(len(dataset), 0, 1, 4, 0, 2, cost).rank_samples(b * 4)
             != DataParallelSampler(len(dataset), 0, 1, 4, 0, 2).rank_samples(b * 4) for b in range(6)]
    assert sum(moved) >= 2


@pytest.mark.slow
def test_dp2_losses_match_unbalanced_and_resume_exactly(tmp_path, python_env):
    def run(name, *overrides):
        metrics = tmp_path / f"{name}.jsonl"
        metrics.unlink(missing_ok=True)
        rc, out, m = train([*TINY_DP2, f"checkpoint.save={tmp_path}/{name}", *overrides], metrics, python_env, nproc=2)
        assert rc in (0, 3), out  # 3: stopped early (exit_after_iters), saved
        return losses(m)

    in_order = run("in_order", "data.balance_data_parallel=false")
    balanced = run("balanced")
    assert [it for it, _ in balanced] == [it for it, _ in in_order] == list(range(1, 7))
    for (_, a), (_, b) in zip(in_order, balanced):  # same samples, summed in another order
        assert a == pytest.approx(b, rel=1e-6)
    first = run("resumed", "train.exit_after_iters=3")
    second = run("resumed")
    assert first + second == balanced            # bit-identical continuation
