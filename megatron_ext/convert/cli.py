"""Command lines of tools/convert_hf_to_megatron.py and tools/convert_megatron_to_hf.py.

Exit codes: 0 = converted; 2 = refused (bad input, existing output, damaged or crafted
checkpoint): the message says why and nothing was written.

``--help`` and the checks that need no tensors (paths, config.json, tokenizer, recipe) run
before torch is imported (~6-10 s): a mistake is answered at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional

from megatron_ext.config.schema import ModelConfig
from megatron_ext.convert.errors import ConversionError
from megatron_ext.quiet import hide_unactionable_warnings
from megatron_ext.training.checkpoint_files import CheckpointError

DTYPES = ("bfloat16", "float16", "float32")
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


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _run(check: Callable[[], None], action: Callable[[], str]) -> int:
    """``check`` (cheap, before torch is imported), then ``action``; refusals exit 2."""
    try:
        check()
        hide_unactionable_warnings()
        print(action())
        return 0
    except (ConversionError, CheckpointError) as e:
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

    def check() -> None:
        from megatron_ext.convert.hf_config import architecture_from_hf_config, read_config_json
        from megatron_ext.convert.output_dir import check_output_dir

        check_output_dir(args.output, args.hf_dir, args.overwrite)
        architecture_from_hf_config(read_config_json(args.hf_dir), args.make_vocab_size_divisible_by,
                                    where=str(args.hf_dir / "config.json"))

    def action() -> str:
        from megatron_ext.convert.hf_to_megatron import MODEL_YAML, import_hf_checkpoint

        dtype = None if args.dtype == "auto" else _torch_dtype(args.dtype)
        result = import_hf_checkpoint(args.hf_dir, args.output, dtype=dtype,
                                      make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                                      overwrite=args.overwrite, progress=not args.no_progress)
        return (f"wrote {result.output} ({result.num_bytes / 2**20:,.1f} MiB, {str(result.dtype)[6:]})\n"
                f"use it with checkpoint.pretrained_checkpoint={result.output}; "
                f"the recipe's model section must match {result.output / MODEL_YAML}")

    return _run(check, action)


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
    parser.add_argument("--no-verify-checksums", action="store_true",
                        help="do not verify the checkpoint files' CRC-32s (they are read once more, ~1 GB/s)")
    args = parser.parse_args(argv)
    model = []

    def check() -> None:
        from megatron_ext.convert.hf_assets import read_hf_assets
        from megatron_ext.convert.locate import locate_checkpoint
        from megatron_ext.convert.output_dir import check_output_dir

        check_output_dir(args.output, args.checkpoint, args.overwrite)
        locate_checkpoint(args.checkpoint)
        read_hf_assets(args.tokenizer)
        model.append(_recipe_model(args.recipe, args.recipe_override) if args.recipe else None)

    def action() -> str:
        from megatron_ext.convert.megatron_to_hf import export_hf_checkpoint

        result = export_hf_checkpoint(args.checkpoint, args.output, args.tokenizer, dtype=_torch_dtype(args.dtype),
                                      model=model[0], max_position_embeddings=args.max_position_embeddings,
                                      max_shard_bytes=args.max_shard_size, overwrite=args.overwrite,
                                      progress=not args.no_progress, verify_checksums=not args.no_verify_checksums)
        a = result.architecture
        rope = f"rope_theta {a.rope_theta:g}" + (f", llama3 scaling x{a.rope_scaling_factor:g}"
                                                 if a.rope_scaling_factor else "")
        return (f"wrote {result.output} from {result.checkpoint}: {len(result.shards)} shard(s), "
                f"{str(result.dtype)[6:]}, {rope}, max_position_embeddings {a.max_position_embeddings}; "
                f"{result.checksums}")

    return _run(check, action)


def _recipe_model(path: Path, overrides: List[str]):
    from omegaconf import OmegaConf

    from megatron_ext.config.loader import RecipeError, compose

    try:
        return OmegaConf.to_object(compose(path, overrides)).model
    except RecipeError as e:
        raise ConversionError(str(e)) from None
