"""Padding cost of document-masked context parallelism on a recipe's length mix.

With CP > 1 every document is padded to a multiple of 2 x CP (TE's per-document split);
this counts those padding tokens on samples drawn from the recipe's data, for several CP
sizes. CPU only.

    python benchmarks/cp_padding.py recipes/bench/llama3_8b_64k.yaml --samples 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_ext.config import RecipeError, load_recipe  # noqa: E402


def padding_fraction(dataset, samples: int, cp: int) -> tuple[float, float]:
    """(padding tokens / all tokens, documents per sample) over the first ``samples`` samples."""
    from megatron_ext.training.batch import pack_micro_batch  # torch: not needed for --help

    padded = real = docs = 0
    for i in range(samples):
        mb = pack_micro_batch([dataset[i]], pad_multiple=2 * cp if cp > 1 else 1, total_multiple=2 * cp if cp > 1 else 1)
        padded += mb.tokens.numel()
        real += mb.num_real_tokens
        docs += len(mb.doc_lengths)
    return (padded - real) / padded, docs / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--cp", type=int, nargs="*", default=[2, 4, 8, 16])
    args = parser.parse_intermixed_args()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from megatron_ext.training.loader import build_dataset  # torch: not needed for --help

    dataset = build_dataset(recipe)
    print(f"{recipe.name}: seq_length {recipe.train.seq_length}, {args.samples} samples")
    print("| CP | padding (% of tokens) | documents / sample |\n|---|---|---|")
    for cp in args.cp:
        frac, docs = padding_fraction(dataset, args.samples, cp)
        print(f"| {cp} | {100 * frac:.3f}% | {docs:.1f} |")


if __name__ == "__main__":
    main()
