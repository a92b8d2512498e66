"""GPU check: a micro-batch long enough for 32-bit offsets to overflow gives the right outputs.

A kernel that computes offsets in 32-bit integers reads wrong memory silently, or crashes ("an
illegal memory access was encountered"), once an offset passes 2^31. At 512K tokens of the
Llama-3-8B shape on one GPU the fused QKV output holds 3.2e9 elements: Transformer Engine's fused
RoPE kernel reads the keys, a view into it, with such offsets (reports/performance.md). Two
comparisons of the decoder's output row by row and of every weight gradient, on one layer of
``recipes/bench/llama3_8b_512k.yaml`` with CP 1:

- ``tail_vs_alone``: a short document at the end of a THD pack of short documents, where its
  offsets are the largest, against that document alone (a micro-batch far below any limit);
- ``single_vs_thd``: one document of N tokens through the single-document path (plain causal
  rows) against the same tokens as THD documents [N-1, 1]: two attention kernels must agree,
  but a fault both paths share (as the RoPE kernel's) goes unseen.

    python tests/gpu/check_long_sequence.py --out OUT_DIR [--recipe R] [--seq-length N] [--cases ...] [overrides...]

e.g. ``model.apply_rope_fusion=false`` as an override. On the CPU (a tiny recipe with
train.device=cpu) it checks the comparisons themselves.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from megatron_ext.config import load_recipe
from megatron_ext.data.sample import PackedSample
from megatron_ext.model.llama import build_gpt_model
from megatron_ext.training.batch import pack_micro_batch
from megatron_ext.training.cuda_env import cuda_env_defaults
from megatron_ext.training.distributed import initialize
from megatron_ext.training.step import per_token_loss

SHORT_DOCUMENT = 4096  # the pack's documents and the compared tail (at most seq_length / 2)


def forward_backward(model, sample: PackedSample, keep: np.ndarray):
    """The decoder's output rows at ``keep`` and the weight gradients of the mean loss over them."""
    device = next(model.parameters()).device
    mb = pack_micro_batch([sample]).to(device)
    captured = {}

    def hook(_module, _inputs, output):
        captured["hidden"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = model.decoder.register_forward_hook(hook)
    model.zero_grad(set_to_none=True)
    try:
        loss = per_token_loss(model, mb, use_te=device.type == "cuda")
    finally:
        handle.remove()
    rows = torch.as_tensor(keep, device=device)
    weight = rows.float() * mb.loss_weight[0]
    ((loss[0].float() * weight).sum() / weight.sum()).backward()
    hidden = captured.pop("hidden")[:, 0][rows].clone()  # [s, b, h] -> the kept rows
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return hidden, grads


def compare(hidden, grads, ref_hidden, ref_grads) -> dict:
    row_diff = (hidden.float() - ref_hidden.float()).norm(dim=-1) / ref_hidden.float().norm(dim=-1).clamp_min(1e-6)
    grad_diff = {name: ((grads[name].float() - g.float()).norm() / g.float().norm().clamp_min(1e-12)).item()
                 for name, g in ref_grads.items() if name in grads}
    worst = max(grad_diff, key=grad_diff.get)
    return {
        "rows_compared": int(hidden.shape[0]),
        "hidden_max_row_rel_diff": row_diff.max().item(),
        "hidden_mean_row_rel_diff": row_diff.mean().item(),
        "hidden_worst_row": int(row_diff.argmax()),
        "grad_max_rel_l2": grad_diff[worst],
        "grad_worst_parameter": worst,
        "grads_compared": len(grad_diff),
        "grads_missing": sorted(set(ref_grads) - set(grads)),
    }


def single_vs_thd(model, n: int, draw) -> dict:
    tokens = draw(n)
    keep = np.arange(n) < n - 2
    single = forward_backward(model, PackedSample(tokens, np.array([n])), keep)
    thd = forward_backward(model, PackedSample(tokens, np.array([n - 1, 1])), keep)
    return compare(*thd, *single)


def tail_vs_alone(model, n: int, draw) -> dict:
    tail = min(SHORT_DOCUMENT, n // 2)
    lengths = np.full(n // tail, tail)
    lengths[0] += n % tail
    tokens = draw(n)
    keep = np.arange(n) >= n - tail
    packed = forward_backward(model, PackedSample(tokens, lengths), keep)
    alone = forward_backward(model, PackedSample(tokens[-tail:], np.array([tail])), np.ones(tail, dtype=bool))
    return compare(*packed, *alone)


CASES = {"tail_vs_alone": tail_vs_alone, "single_vs_thd": single_vs_thd}


def main(out: Path, recipe_path: str, seq_length: int, cases: list, overrides: list) -> dict:
    recipe = load_recipe(recipe_path, [
        "model.num_layers=1", "parallel.context_parallel_size=1", f"model.max_position_embeddings={seq_length}",
        "train.global_batch_size=1",
        # The check packs its own micro-batches of seq_length tokens: the recipe's own length,
        # and the validator's limit on it (which this check measures), do not apply (nor does
        # the check of deterministic attention's limit, under NVTE_ALLOW_NONDETERMINISTIC_ALGO=0).
        f"train.seq_length={min(seq_length, 4096)}", *overrides])
    cuda_env_defaults(recipe)  # as the entry point does, before CUDA starts
    initialize(recipe)
    on_gpu = recipe.train.device == "cuda"
    model = build_gpt_model(recipe).to(recipe.train.device).train()
    rng = np.random.default_rng(0)
    draw = lambda count: rng.integers(0, recipe.model.vocab_size, count)  # noqa: E731
    result = {"recipe": recipe_path, "seq_length": seq_length, "layers": recipe.model.num_layers,
              "apply_rope_fusion": recipe.model.apply_rope_fusion, "overrides": overrides, "cases": {},
              "device": torch.cuda.get_device_name() if on_gpu else "cpu"}
    for name in cases:
        start = time.perf_counter()
        result["cases"][name] = CASES[name](model, seq_length, draw) | {"seconds": round(time.perf_counter() - start, 1)}
        print(name, json.dumps(result["cases"][name]), flush=True)
        if on_gpu:
            torch.cuda.empty_cache()
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out.mkdir(parents=True, exist_ok=True)
    (out / f"long_sequence_{seq_length}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="recipes/bench/llama3_8b_512k.yaml")
    parser.add_argument("--seq-length", type=int, default=524288)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.num_layers=2")
    args = parser.parse_args()
    main(args.out, args.recipe, args.seq_length, args.cases, args.overrides)
