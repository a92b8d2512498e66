"""Which global sample indices a data-parallel rank reads, resumable from a sample count.

Global batch ``i`` is always samples ``[i * G, (i + 1) * G)``: which samples a global batch
holds never depends on the layout or on balancing, so the position to resume from is just the
consumed-sample count. Only how a batch is dealt to the ranks differs:

- in order (Megatron's pretraining-sampler order): micro-batch ``k`` of DP rank ``r`` holds
  ``micro_batch_size`` consecutive indices starting at ``i * G + (k * dp + r) * micro_batch_size``;
- balanced (``data.balance_data_parallel``, with a per-sample cost): document-masked samples
  differ up to ~30x in attention work (one 64K document vs packed short ones), and every rank
  waits for the slowest at the gradient reduce. ``balanced_assignment`` deals the batch's
  samples so that every rank gets G / dp of them and about the same total cost.

Both are pure functions of the batch's indices (and their costs), so every rank computes the
same assignment without communicating, and a resumed run reads exactly what the straight one did.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterator, List, Optional, Sequence


def balanced_assignment(costs: Sequence[float], ranks: int) -> List[List[int]]:
    """Positions into ``costs`` for each rank: equal counts, near-equal cost sums.

    Longest-processing-time first (most costly sample to the least loaded rank that still has
    room), then pairwise swaps between the most and least loaded ranks while they narrow the
    gap. Each rank's positions come most costly first, so micro-batch slot k holds comparable
    work on every rank. Ties break by position: the result is deterministic.
    """
    n = len(costs)
    if n % ranks:
        raise ValueError(f"{n} samples cannot be dealt evenly to {ranks} ranks")
    per_rank = n // ranks
    assigned: List[List[int]] = [[] for _ in range(ranks)]
    load = [0.0] * ranks
    open_ranks = [(0.0, r) for r in range(ranks)]  # (load, rank) of ranks that still have room
    for i in sorted(range(n), key=lambda i: (-costs[i], i)):
        _, r = heapq.heappop(open_ranks)
        assigned[r].append(i)
        load[r] += costs[i]
        if len(assigned[r]) < per_rank:
            heapq.heappush(open_ranks, (load[r], r))
    while ranks > 1:
        hi = max(range(ranks), key=lambda r: (load[r], -r))
        lo = min(range(ranks), key=lambda r: (load[r], r))
        gap = load[hi] - load[lo]
        # The swap that brings the two loads closest together, if it narrows the gap at all.
        best = min(((abs(gap - 2 * (costs[a] - costs[b])), a, b) for a in assigned[hi] for b in assigned[lo]
                    if costs[a] > costs[b]), default=None)
        if best is None or best[0] >= gap:
            break
        _, a, b = best
        assigned[hi][assigned[hi].index(a)] = b
        assigned[lo][assigned[lo].index(b)] = a
        load[hi] += costs[b] - costs[a]
        load[lo] += costs[a] - costs[b]
    return [sorted(positions, key=lambda i: (-costs[i], i)) for positions in assigned]


class DataParallelSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 global_batch_size: int, dp_rank: int, dp_size: int,
                 cost: Optional[Callable[[int], float]] = None):
        """``cost``: the work of global sample i (e.g. its FLOPs); given and dp_size > 1, each
        global batch is dealt to the ranks by ``balanced_assignment``."""
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not divisible by micro batch "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} outside [0, {dp_size})")
        if consumed_samples % global_batch_size:
            raise ValueError(f"consumed samples {consumed_samples} is not a whole number of global batches "
                             f"of {global_batch_size}")
        self.total, self.consumed = total_samples, consumed_samples
        self.mbs, self.gbs, self.rank, self.dp = micro_batch_size, global_batch_size, dp_rank, dp_size
        self.cost = cost if dp_size > 1 else None  # one rank: nothing to balance, keep the order

    def rank_samples(self, first: int) -> List[int]:
        """This rank's global indices of the batch that starts at sample ``first``, slot by slot."""
        batch = [(first + j) % self.total for j in range(self.gbs)]
        if self.cost is None:
            step = self.mbs * self.dp
            return [batch[k * step + self.rank * self.mbs + j]
                    for k in range(self.gbs // step) for j in range(self.mbs)]
        positions = balanced_assignment([self.cost(i) for i in batch], self.dp)[self.rank]
        return [batch[p] for p in positions]

    def __iter__(self) -> Iterator[List[int]]:
        """Yield this rank's micro-batches (lists of global indices), wrapping around the data."""
        start = self.consumed
        while True:
            mine = self.rank_samples(start)
            for k in range(0, len(mine), self.mbs):
                yield mine[k:k + self.mbs]
            start += self.gbs
