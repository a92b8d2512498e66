"""What an iteration asks of the slowest data-parallel rank: tokens and causal attention pairs.

Attention work depends on the data (sum over documents of d(d+1)/2 pairs), so it is counted
on the recipe's own samples, dealt to the ranks exactly as training deals them
(``DataParallelSampler``, balanced or not). When none of the recipe's prepared data is on
this machine, ``AssumedLengths`` stands in for it: long-packing domains give one document per
sample, the others documents of ``short_document`` tokens; the planner says so. Data that is
here but refused (part of it missing, another tokenizer, a domain too small for its
max_epochs) is an error, as in training: a plan on invented lengths would hide it.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from megatron_ext.config import find_recipe, load_recipe
from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import data_parallel_size
from megatron_ext.data.sample import SampleDataset

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RankWork:
    """One iteration on the data-parallel rank that has the most work."""

    tokens: int      # this rank's tokens (its share of the global batch)
    pairs: float     # causal query-key pairs over all its documents
    micro_batches: int


class AssumedLengths:
    """Document lengths from the recipe's domain shares alone (no prepared data needed)."""

    def __init__(self, recipe: Recipe, short_document: int = 4096):
        self.seq, self.short = recipe.train.seq_length, min(short_document, recipe.train.seq_length)
        self.long_share = sum(d.share for d in recipe.data.domains if d.packing == "long")
        self.size = recipe.train.train_iters * recipe.train.global_batch_size
        self.note = (f"prepared data not found: assumed one document per sample for long domains "
                     f"({100 * self.long_share:.0f}% of samples) and {self.short}-token documents for the rest")

    def __len__(self) -> int:
        return self.size

    def document_lengths(self, index: int) -> np.ndarray:
        # Evenly interleaved like the mixture's blending: sample i is long while the running
        # count of long samples is behind its share.
        if int((index + 1) * self.long_share) > int(index * self.long_share):
            return np.array([self.seq])
        full, rest = divmod(self.seq, self.short)
        return np.array([self.short] * full + ([rest] if rest else []))


def _no_data_here(recipe: Recipe) -> bool:
    return not any(os.path.exists(prefix + suffix) for domain in recipe.data.domains for prefix in domain.paths
                   for suffix in (".bin", ".idx"))


def workload_dataset(recipe: Recipe, short_document: int = 4096) -> Tuple[SampleDataset, Optional[str]]:
    """The recipe's dataset, or AssumedLengths with a note when none of its data files is here.
    Raises RecipeError for data that is here but refused, naming each problem's key."""
    from megatron_ext.training.loader import build_dataset

    if recipe.data.synthetic is None and _no_data_here(recipe):
        assumed = AssumedLengths(recipe, short_document)
        return assumed, assumed.note
    with contextlib.redirect_stdout(io.StringIO()):  # the mixture prints its plan
        return build_dataset(recipe), None


def _pairs(lengths) -> float:
    d = np.asarray(lengths, dtype=np.float64)
    return float((d * (d + 1) / 2).sum())


def rank_work(recipe: Recipe, dataset: SampleDataset, dp: int, batches: range) -> List[RankWork]:
    """Per global batch, the work of its slowest DP rank (most FLOPs), as training deals it."""
    from megatron_ext.training.loader import sample_cost
    from megatron_ext.data.sampler import DataParallelSampler

    t = recipe.train
    cost = sample_cost(recipe, dataset) if recipe.data.balance_data_parallel else None
    samplers = [DataParallelSampler(len(dataset), 0, t.micro_batch_size, t.global_batch_size, r, dp, cost)
                for r in range(dp)]
    stock_pairs = t.seq_length * (t.seq_length + 1) / 2
    out = []
    for b in batches:
        per_rank = []
        for sampler in samplers:
            samples = sampler.rank_samples(b * t.global_batch_size)
            pairs = (len(samples) * stock_pairs if not t.reset_attention_mask
                     else sum(_pairs(dataset.document_lengths(i)) for i in samples))
            per_rank.append((pairs, len(samples)))
        pairs, n = max(per_rank)
        out.append(RankWork(tokens=n * t.seq_length, pairs=pairs, micro_batches=n // t.micro_batch_size))
    return out


def run_work(run: dict, iterations: Optional[range] = None) -> Tuple[Recipe, List[RankWork]]:
    """The recipe of a measured run (a benchmark or profile row: recipe path relative to the
    repository, overrides, GPUs) and the work of ``iterations`` (default: those after its warm-up)."""
    in_repo = REPO / run["recipe"]
    recipe = load_recipe(in_repo if in_repo.is_file() else find_recipe(run["recipe"]), run.get("overrides", []),
                         world_size=run["gpus"], for_new_runs=False)
    dataset, _ = workload_dataset(recipe)
    if iterations is None:
        iterations = range(run.get("warmup", 0), recipe.train.train_iters)
    return recipe, rank_work(recipe, dataset, data_parallel_size(recipe, run["gpus"]), iterations)
