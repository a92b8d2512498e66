"""The chunked linear-cross-entropy equals logits + cross-entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

import megatron_ext.model.linear_cross_entropy as lce


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 4 * 37 * 16])  # one chunk / many ragged chunks
def test_matches_reference(monkeypatch, chunk_bytes):
    monkeypatch.setattr(lce, "_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    n, h, v = 300, 24, 37
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    grad = torch.rand(n, dtype=torch.float64)

    loss = lce.linear_cross_entropy(hidden, weight, labels)
    (loss * grad).sum().backward()
    ours = loss.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    ref = F.cross_entropy(hidden @ weight.t(), labels, reduction="none")
    (ref * grad).sum().backward()
    # The logits are computed in fp32 by design: agreement to fp32 rounding (values are O(1)).
    assert torch.allclose(ours[0], ref.detach().float(), rtol=0, atol=2e-5)
    assert torch.allclose(ours[1], hidden.grad, rtol=0, atol=2e-5)
    assert torch.allclose(ours[2], weight.grad, rtol=0, atol=2e-5)


def test_chunking_bounds_the_logits_memory(monkeypatch):
    monkeypatch.setattr(lce, "_CHUNK_BYTES", 1 << 30)
    # 128K vocabulary: about 2K tokens per chunk, i.e. 1 GiB of fp32 logits at a time
    assert lce.chunk_tokens(128256) * 128256 * 4 <= 1 << 30
