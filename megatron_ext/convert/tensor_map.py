"""Which Megatron dist-checkpoint tensor holds which HF tensors, and how they are rearranged.

The dist checkpoint stores *global* tensors, independent of TP/CP/DP: decoder tensors are
stacked over layers (``decoder.layers.*``, layer axis first); the fused QKV weight holds, for
each query group in turn, that group's query heads, then its key head, then its value head
(what ``SelfAttention`` splits per TP rank); ``linear_fc1`` holds all gate rows, then all up
rows (Megatron's SwiGLU sharded factory stores the two halves TP-independently); embedding and
output layer are padded to ``padded_vocab_size`` rows (zeros here, stripped on export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from megatron_ext.convert.architecture import LlamaArchitecture

Shape = Tuple[int, ...]

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
QKV = "decoder.layers.self_attention.linear_qkv.weight"
QKV_NORM = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"
FC1 = "decoder.layers.mlp.linear_fc1.weight"
FC1_NORM = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
# Modules whose per-layer ``_extra_state`` (FP8 metadata in TE, None in the local spec) the
# layer specs request when loading, so an imported checkpoint must carry it. Keys a spec does
# not request are ignored on load; the TE spec also asks for its attention's and final norm's.
EXTRA_STATE_MODULES = (
    "decoder.layers.self_attention.linear_qkv",
    "decoder.layers.self_attention.core_attention",
    "decoder.layers.self_attention.linear_proj",
    "decoder.layers.mlp.linear_fc1",
    "decoder.layers.mlp.linear_fc2",
)
FINAL_NORM_EXTRA_STATE = "decoder.final_layernorm._extra_state"
# Buffers some HF checkpoints carry that are recomputed from the config, never trained.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorRule:
    """One Megatron tensor (for stacked tensors: one layer of it) <-> its HF tensors."""

    megatron_key: str
    # Shape of the tensor, or of one layer's slice when per_layer.
    megatron_shape: Shape
    per_layer: bool
    # HF name templates ("{layer}" is filled in) and shapes, in HF order.
    hf: Tuple[Tuple[str, Shape], ...]
    merge: Callable[[List[torch.Tensor]], torch.Tensor]
    split: Callable[[torch.Tensor], List[torch.Tensor]]

    def hf_names(self, layer: Optional[int]) -> List[str]:
        return [template.format(layer=layer) for template, _ in self.hf]

    def global_shape(self, num_layers: int) -> Shape:
        return (num_layers, *self.megatron_shape) if self.per_layer else self.megatron_shape


def _same(parts: List[torch.Tensor]) -> torch.Tensor:
    return parts[0]


def _unchanged(tensor: torch.Tensor) -> List[torch.Tensor]:
    return [tensor]


def _qkv_rules(a: LlamaArchitecture) -> Tuple[Callable, Callable]:
    g, d, h = a.num_query_groups, a.head_dim, a.hidden_size
    q_rows = a.heads_per_group * d

    def merge(parts: List[torch.Tensor]) -> torch.Tensor:
        q, k, v = parts
        return torch.cat([q.reshape(g, q_rows, h), k.reshape(g, d, h), v.reshape(g, d, h)], dim=1).reshape(-1, h)

    def split(qkv: torch.Tensor) -> List[torch.Tensor]:
        q, k, v = qkv.reshape(g, q_rows + 2 * d, h).split([q_rows, d, d], dim=1)
        return [q.reshape(-1, h).contiguous(), k.reshape(-1, h).contiguous(), v.reshape(-1, h).contiguous()]

    return merge, split


def _fc1_split(fc1: torch.Tensor) -> List[torch.Tensor]:
    gate, up = fc1.chunk(2, dim=0)
    return [gate.contiguous(), up.contiguous()]


def _vocab_rules(a: LlamaArchitecture) -> Tuple[Callable, Callable]:
    def merge(parts: List[torch.Tensor]) -> torch.Tensor:
        (weight,) = parts
        padding = weight.new_zeros(a.padded_vocab_size - a.vocab_size, a.hidden_size)
        return torch.cat([weight, padding]) if padding.numel() else weight

    def split(weight: torch.Tensor) -> List[torch.Tensor]:
        return [weight[: a.vocab_size].contiguous()]

    return merge, split


def tensor_rules(a: LlamaArchitecture) -> List[TensorRule]:
    """All rules, in the order HF lists the tensors (embedding, layers, norm, head)."""
    h, ffn = a.hidden_size, a.ffn_hidden_size
    layer = "model.layers.{layer}."
    qkv_merge, qkv_split = _qkv_rules(a)
    vocab_merge, vocab_split = _vocab_rules(a)
    rules = [
        TensorRule(EMBEDDING, (a.padded_vocab_size, h), False, (("model.embed_tokens.weight", (a.vocab_size, h)),),
                   vocab_merge, vocab_split),
        TensorRule(QKV_NORM, (h,), True, ((layer + "input_layernorm.weight", (h,)),), _same, _unchanged),
        TensorRule(QKV, (a.qkv_rows, h), True,
                   ((layer + "self_attn.q_proj.weight", (a.num_attention_heads * a.head_dim, h)),
                    (layer + "self_attn.k_proj.weight", (a.num_query_groups * a.head_dim, h)),
                    (layer + "self_attn.v_proj.weight", (a.num_query_groups * a.head_dim, h))),
                   qkv_merge, qkv_split),
        TensorRule(PROJ, (h, a.num_attention_heads * a.head_dim), True,
                   ((layer + "self_attn.o_proj.weight", (h, a.num_attention_heads * a.head_dim)),), _same, _unchanged),
        TensorRule(FC1_NORM, (h,), True, ((layer + "post_attention_layernorm.weight", (h,)),), _same, _unchanged),
        TensorRule(FC1, (2 * ffn, h), True,
                   ((layer + "mlp.gate_proj.weight", (ffn, h)), (layer + "mlp.up_proj.weight", (ffn, h))),
                   lambda parts: torch.cat(parts), _fc1_split),
        TensorRule(FC2, (h, ffn), True, ((layer + "mlp.down_proj.weight", (h, ffn)),), _same, _unchanged),
        TensorRule(FINAL_NORM, (h,), False, (("model.norm.weight", (h,)),), _same, _unchanged),
    ]
    if not a.tie_embeddings:
        rules.append(TensorRule(OUTPUT_LAYER, (a.padded_vocab_size, h), False, (("lm_head.weight", (a.vocab_size, h)),),
                                vocab_merge, vocab_split))
    return rules


def conversion_order(a: LlamaArchitecture) -> List[Tuple[TensorRule, Optional[int]]]:
    """(rule, layer) pairs in HF order: embedding, all of layer 0, ..., final norm, output layer."""
    rules = tensor_rules(a)
    stacked = [rule for rule in rules if rule.per_layer]
    embedding, *tail = [rule for rule in rules if not rule.per_layer]
    return ([(embedding, None)] + [(rule, i) for i in range(a.num_layers) for rule in stacked]
            + [(rule, None) for rule in tail])


def hf_tensor_shapes(a: LlamaArchitecture) -> Dict[str, Shape]:
    """Every HF tensor of the model with its shape, in the order export writes them."""
    return {name: shape for rule, layer in conversion_order(a)
            for name, (_, shape) in zip(rule.hf_names(layer), rule.hf)}


def megatron_tensor_shapes(a: LlamaArchitecture) -> Dict[str, Shape]:
    return {rule.megatron_key: rule.global_shape(a.num_layers) for rule in tensor_rules(a)}
