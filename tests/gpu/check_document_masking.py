"""GPU check: a document-masked packed (THD) forward equals each document run on its own.

Builds the tiny recipe's GPTModel with the Transformer Engine spec, packs documents of
different lengths into one sample, and compares its logits (and the per-token loss of the
training path) with running every document alone as a plain causal sequence.

    python tests/gpu/check_document_masking.py --out OUT_DIR
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from megatron_ext.config import load_recipe
from megatron_ext.data.sample import PackedSample
from megatron_ext.model.linear_cross_entropy import gpt_output_processor
from megatron_ext.model.llama import build_gpt_model
from megatron_ext.training.batch import pack_micro_batch
from megatron_ext.training.distributed import initialize
from megatron_ext.training.step import packed_seq_params

DOCS = [700, 1, 129, 2048, 64, 1154]  # includes a 1-token document; sums to 4096


def main(out: Path, dtype: str, overrides: list) -> dict:
    recipe = load_recipe("recipes/tiny/prolong_stage1.yaml", [f"precision.bf16={dtype == 'bf16'}", *overrides])
    initialize(recipe)
    model = build_gpt_model(recipe).cuda().eval()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, recipe.model.vocab_size, sum(DOCS))
    packed = pack_micro_batch([PackedSample(tokens, np.array(DOCS))]).to("cuda")
    assert packed.is_thd
    with torch.no_grad():
        logits = model(packed.tokens, packed.position_ids, None, packed_seq_params=packed_seq_params(packed))[0]
        loss = model(packed.tokens, packed.position_ids, None, labels=packed.labels,
                     packed_seq_params=packed_seq_params(packed), output_processor=gpt_output_processor)[0]
        separate, start = [], 0
        for d in DOCS:
            doc = torch.as_tensor(tokens[start:start + d], device="cuda")[None]
            separate.append(model(doc, torch.arange(d, device="cuda")[None], None)[0])
            start += d
    separate = torch.cat(separate).float()
    logits = logits.float()
    diff = (logits - separate).abs()
    ref_loss = torch.nn.functional.cross_entropy(separate, packed.labels[0], reduction="none")
    w = packed.loss_weight[0].bool()
    result = {
        "dtype": dtype,
        "overrides": overrides,
        "documents": DOCS,
        "logits_max_abs_diff": diff.max().item(),
        "logits_rel_l2": (diff.norm() / separate.norm()).item(),
        "logits_max_abs": separate.abs().max().item(),
        "top1_agreement": (logits.argmax(-1) == separate.argmax(-1)).float().mean().item(),
        "loss_max_abs_diff": (loss.float()[w] - ref_loss[w]).abs().max().item(),
        "device": torch.cuda.get_device_name(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"document_masking_{dtype}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.num_query_groups=2")
    args = parser.parse_args()
    main(args.out, args.dtype, args.overrides)
