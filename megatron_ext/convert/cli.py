"""Command lines of tools/convert_hf_to_megatron.py and tools/convert_megatron_to_hf.py.

Exit codes: 0 = converted; 2 = refused (bad input, existing output): the message says why
and nothing was written.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch

from megatron_ext.config.schema import ModelConfig
from megatron_ext.convert.errors import ConversionError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    upper = text.strip().upper()
    for unit, scale in sorted(_SIZE_UNITS.items(), key=lambda item: -len(item[0])):
        if upper.endswith(unit):
            upper, factor = upper[: -len(unit)], scale
            break
    else:
        factor = 1
    try:
        return int(float(upper) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None


def _run(action: Callable[[], str]) -> int:
    # Megatron-Core warns at import that TE/Apex are absent (no kernels are needed here), and
    # DCP that it runs in a single process (it does, on purpose).
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    try:
        print(action())
        return 0
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def import_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/convert_hf_to_megatron.py",
        description="HF Llama directory -> Megatron distributed checkpoint for checkpoint.pretrained_checkpoint "
                    "(loads at any TP/CP/DP). Also writes OUTPUT/model.yaml, the matching recipe model section.")
    parser.add_argument("hf_dir", type=Path, help="HF model directory (config.json + safetensors)")
    parser.add_argument("output", type=Path, help="checkpoint directory to create")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="dtype stored in the checkpoint (auto: the HF weights' dtype)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=ModelConfig.make_vocab_size_divisible_by,
                        help="pad the embedding to a multiple of this (must equal the recipe's model."
                             "make_vocab_size_divisible_by)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def action() -> str:
        from megatron_ext.convert.hf_to_megatron import MODEL_YAML, import_hf_checkpoint

        result = import_hf_checkpoint(args.hf_dir, args.output, dtype=DTYPES.get(args.dtype),
                                      make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                                      overwrite=args.overwrite, progress=not args.no_progress)
        return (f"wrote {result.output} ({result.num_bytes / 2**20:,.1f} MiB, {str(result.dtype)[6:]})\n"
                f"use it with checkpoint.pretrained_checkpoint={result.output}; "
                f"the recipe's model section must match {result.output / MODEL_YAML}")

    return _run(action)


def export_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/convert_megatron_to_hf.py",
        description="Megatron checkpoint (any TP/CP/DP layout) -> HF Llama directory that "
                    "AutoModelForCausalLM / AutoTokenizer load.")
    parser.add_argument("checkpoint", type=Path,
                        help="a training save directory (its latest iteration is used), an iter_XXXXXXX "
                             "directory, or an imported checkpoint")
    parser.add_argument("output", type=Path, help="HF directory to create")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="HF directory of the model, for tokenizer files, generation config and token ids")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="dtype of the exported weights")
    parser.add_argument("--max-shard-size", type=parse_size, default="5GB", help="safetensors shard size (5GB)")
    parser.add_argument("--max-position-embeddings", type=int,
                        help="override the context length in config.json (default: the recipe's "
                             "model.max_position_embeddings)")
    parser.add_argument("--recipe", type=Path,
                        help="recipe the checkpoint was trained with, for checkpoints that store none")
    parser.add_argument("--recipe-override", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to --recipe (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def action() -> str:
        from megatron_ext.convert.megatron_to_hf import export_hf_checkpoint

        model = _recipe_model(args.recipe, args.recipe_override) if args.recipe else None
        result = export_hf_checkpoint(args.checkpoint, args.output, args.tokenizer, dtype=DTYPES[args.dtype],
                                      model=model, max_position_embeddings=args.max_position_embeddings,
                                      max_shard_bytes=args.max_shard_size, overwrite=args.overwrite,
                                      progress=not args.no_progress)
        a = result.architecture
        rope = f"rope_theta {a.rope_theta:g}" + (f", llama3 scaling x{a.rope_scaling_factor:g}"
                                                 if a.rope_scaling_factor else "")
        return (f"wrote {result.output} from {result.checkpoint}: {len(result.shards)} shard(s), "
                f"{str(result.dtype)[6:]}, {rope}, max_position_embeddings {a.max_position_embeddings}")

    return _run(action)


def _recipe_model(path: Path, overrides: List[str]):
    from omegaconf import OmegaConf

    from megatron_ext.config.loader import RecipeError, compose

    try:
        return OmegaConf.to_object(compose(path, overrides)).model
    except RecipeError as e:
        raise ConversionError(str(e)) from None
