"""Token-averaged loss: every loss token of the global batch weighs the same."""

import numpy as np
import torch

from megatron_ext.data.sample import PackedSample
from megatron_ext.training.batch import pack_micro_batch
from megatron_ext.training.step import loss_func, reduce_reports


def test_loss_is_averaged_over_tokens_not_sequences():
    # Two micro-batches: one with 2 loss tokens, one with 6. Per-token losses 1.0 and 3.0.
    a = pack_micro_batch([PackedSample(np.arange(3), np.array([3]), domain=0)])
    b = pack_micro_batch([PackedSample(np.arange(7), np.array([7]), domain=1)])
    reports, counted = [], 0
    for mb, value in ((a, 1.0), (b, 3.0)):
        loss_sum, n, report = loss_func(mb, 2, torch.full(mb.tokens.shape, value))
        assert float(loss_sum) == value * float(mb.loss_weight.sum())
        counted += int(n)
        reports.append(report)
    totals = reduce_reports(reports, group=None)
    token_average = float(totals["loss"][0] / totals["loss"][1])
    assert counted == 8
    assert token_average == (2 * 1.0 + 6 * 3.0) / 8        # 2.5
    assert token_average != (1.0 + 3.0) / 2                 # not the mean of sequence means
    sums, counts = totals["domains"]
    assert (sums / counts).tolist() == [1.0, 3.0] and counts.tolist() == [2, 6]


def test_masked_tokens_contribute_nothing():
    mb = pack_micro_batch([PackedSample(np.arange(6), np.array([6]), loss_mask=np.array([0, 0, 0, 1, 1, 1]))])
    per_token = torch.arange(6, dtype=torch.float32)[None]
    loss_sum, n, _ = loss_func(mb, 1, per_token)
    # targets are tokens 3, 4, 5 -> predicted at positions 2, 3, 4
    assert int(n) == 3 and float(loss_sum) == 2 + 3 + 4
