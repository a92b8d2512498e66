"""The training data: dataset from the recipe -> this rank's stream of MicroBatches."""

from __future__ import annotations

import atexit
import signal
import weakref
from dataclasses import replace
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import cp_padding_multiple, padded_vocab_size, sequence_multiple
from megatron_ext.data.mixture import build_mixture
from megatron_ext.data.sample import SampleDataset
from megatron_ext.data.sampler import DataParallelSampler
from megatron_ext.data.synthetic import SyntheticDataset
from megatron_ext.training.batch import MicroBatch, pack_micro_batch
from megatron_ext.training.metrics import FlopsModel


def build_dataset(recipe: Recipe, rank: int = 0, local_rank: int = 0) -> SampleDataset:
    """The recipe's dataset; a domain mixture prints its plan (shares, epochs) on rank 0.
    data.verify_checksums hashes the files on one rank per node (local rank 0): the ranks of a
    node read the same files, and a mismatch there fails the whole run."""
    d = recipe.data
    if d.synthetic is not None:
        vocab = d.synthetic.vocab_size or recipe.model.vocab_size
        return SyntheticDataset(d.synthetic, recipe.train.seq_length, vocab, recipe.train.seed)
    mixture = build_mixture(recipe, verify_checksums=d.verify_checksums and local_rank == 0)
    if rank == 0:
        print(mixture.summary(), flush=True)
    return mixture


class _Collate:
    """Validates each sample against the recipe, then packs the micro-batch (in workers)."""

    def __init__(self, recipe: Recipe):
        self.seq_length = recipe.train.seq_length
        self.vocab = padded_vocab_size(recipe)
        self.pad_multiple = cp_padding_multiple(recipe)
        self.total_multiple = sequence_multiple(recipe)
        self.document_masking = recipe.train.reset_attention_mask

    def __call__(self, samples) -> MicroBatch:
        for s in samples:
            s.check(self.seq_length, self.vocab)
        if not self.document_masking:
            samples = [replace(s, doc_lengths=np.array([self.seq_length])) for s in samples]
        return pack_micro_batch(samples, self.pad_multiple, self.total_multiple)


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset: SampleDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def sample_cost(recipe: Recipe, dataset: SampleDataset):
    """Training FLOPs of global sample i (GEMMs per token + attention per document), from its
    document lengths alone: what data-parallel balancing evens out across ranks."""
    flops = FlopsModel.from_recipe(recipe)
    return lambda index: flops.training_flops(dataset.document_lengths(index).tolist())


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore the stop signals. Slurm and ``kill -- -PGID`` signal every
    process of the job; a worker killed by one fails the run ("DataLoader worker ... killed by
    signal") before the main process, which handles them (training/signals.py), can save.
    The workers end when the main process does."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def micro_batches(recipe: Recipe, dataset: SampleDataset, consumed_samples: int, dp_rank: int,
                  dp_size: int) -> Iterator[MicroBatch]:
    """Endless stream of this DP rank's micro-batches, starting after ``consumed_samples``."""
    t = recipe.train
    cost = sample_cost(recipe, dataset) if recipe.data.balance_data_parallel else None
    sampler = DataParallelSampler(len(dataset), consumed_samples, t.micro_batch_size, t.global_batch_size,
                                  dp_rank, dp_size, cost)
    workers = recipe.data.num_workers
    stream = iter(DataLoader(_Indexed(dataset), batch_sampler=sampler, collate_fn=_Collate(recipe),
                             num_workers=workers, pin_memory=t.device == "cuda", persistent_workers=workers > 0,
                             prefetch_factor=4 if workers > 0 else None,
                             worker_init_fn=_leave_signals_to_the_main_process))
    if workers > 0:
        atexit.register(_end_workers, weakref.ref(stream))
    return stream


def _end_workers(stream_ref: weakref.ref) -> None:
    """Ends the workers of a stream still alive at exit: the run failed and its traceback holds
    the stream. Without this the process never exits: multiprocessing's own exit handler stops
    the workers with SIGTERM, which they ignore (above), then waits for them forever.

    Registered after that handler and after torch's exit flag (set at exit, it turns the
    DataLoader's shutdown into a no-op), so it runs before both (atexit is last in, first out).
    The shutdown tells the workers to end and waits 5 s for each; one still busy with a sample
    then gets SIGTERM, which it ignores, so it is killed (it holds nothing to save).
    ``_shutdown_workers`` and ``_workers`` are private, but torch has no public way to end a live
    iterator's workers."""
    stream = stream_ref()
    if stream is None:
        return
    stream._shutdown_workers()
    for worker in getattr(stream, "_workers", []):
        if worker.is_alive():
            worker.kill()
