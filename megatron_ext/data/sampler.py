"""Which global sample indices a data-parallel rank reads, resumable from a sample count.

Global batch ``i`` is samples ``[i * G, (i + 1) * G)``. Within it, micro-batch ``k`` of DP rank
``r`` holds ``micro_batch_size`` consecutive indices starting at
``i * G + (k * dp + r) * micro_batch_size`` (Megatron's pretraining-sampler order), so ranks
read disjoint samples, and the position to resume from is just the consumed-sample count.
"""

from __future__ import annotations

from typing import Iterator, List


class DataParallelSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 global_batch_size: int, dp_rank: int, dp_size: int):
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

    def __iter__(self) -> Iterator[List[int]]:
        """Yield this rank's micro-batches (lists of global indices), wrapping around the data."""
        step = self.mbs * self.dp
        start = self.consumed
        while True:
            for k in range(self.gbs // step):
                first = start + (k * self.dp + self.rank) * self.mbs
                yield [(first + j) % self.total for j in range(self.mbs)]
            start += self.gbs
