"""The Megatron <-> HF tensor rearrangements, checked element by element."""

import torch

from megatron_ext.convert.architecture import LlamaArchitecture
from megatron_ext.convert.tensor_map import (
    FC1,
    QKV,
    conversion_order,
    hf_tensor_shapes,
    megatron_tensor_shapes,
    tensor_rules,
)

ARCH = LlamaArchitecture(num_layers=3, hidden_size=4, ffn_hidden_size=6, num_attention_heads=4, num_query_groups=2,
                         head_dim=2, vocab_size=10, padded_vocab_size=16, norm_epsilon=1e-5, tie_embeddings=False,
                         rope_theta=1e4, rope_scaling_factor=None, max_position_embeddings=128)


def _rule(key):
    return next(rule for rule in tensor_rules(ARCH) if rule.megatron_key == key)


def _rows(count, start):
    """count rows of hidden size 4 whose every element is its row label."""
    return torch.arange(start, start + count, dtype=torch.float32)[:, None].expand(count, 4).contiguous()


def test_qkv_interleaves_query_groups():
    # q: 4 heads x head_dim 2 = rows 0..7; k: 2 groups = rows 100..103; v: rows 200..203.
    q, k, v = _rows(8, 0), _rows(4, 100), _rows(4, 200)
    merged = _rule(QKV).merge([q, k, v])
    # Per group: its 2 query heads (4 rows), its key head, its value head.
    expected = [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    assert merged[:, 0].tolist() == expected
    assert [torch.equal(a, b) for a, b in zip(_rule(QKV).split(merged), (q, k, v))] == [True] * 3


def test_fc1_is_gate_then_up():
    gate, up = _rows(6, 0), _rows(6, 50)
    merged = _rule(FC1).merge([gate, up])
    assert merged[:, 0].tolist() == list(range(6)) + list(range(50, 56))
    assert all(torch.equal(a, b) for a, b in zip(_rule(FC1).split(merged), (gate, up)))


def test_vocab_padded_with_zero_rows_and_stripped():
    rule = next(r for r in tensor_rules(ARCH) if r.megatron_key == "embedding.word_embeddings.weight")
    weight = _rows(10, 1)
    padded = rule.merge([weight])
    assert padded.shape == (16, 4) and torch.equal(padded[:10], weight) and not padded[10:].any()
    assert torch.equal(rule.split(padded)[0], weight)


def test_shapes_and_order():
    megatron = megatron_tensor_shapes(ARCH)
    assert megatron[QKV] == (3, 16, 4) and megatron[FC1] == (3, 12, 4)
    assert megatron["output_layer.weight"] == (16, 4)
    hf = list(hf_tensor_shapes(ARCH))
    assert len(hf) == 2 + 9 * 3 + 1
    assert hf[:4] == ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                      "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"]
    assert hf[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert [layer for _, layer in conversion_order(ARCH)][1:7] == [0] * 6
