"""Megatron torch_dist checkpoint (any TP/CP/DP layout) -> HF Llama directory.

Reads only the ``model`` tensors, one layer of one tensor at a time, whatever chunking the
training run wrote (TP shards, distributed optimizer, fully parallel saves), and streams
them into safetensors shards. The HF config carries what was trained: RoPE theta, llama3
scaling and ``max_position_embeddings`` come from the recipe stored in the checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch
from tqdm import tqdm

from megatron_ext.config.schema import ModelConfig
from megatron_ext.convert.architecture import LlamaArchitecture, architecture_from_model_config, model_config_from_dict
from megatron_ext.convert.dist_checkpoint_io import DistCheckpointReader
from megatron_ext.convert.errors import ConversionError, summarize
from megatron_ext.convert.hf_assets import read_hf_assets, write_hf_assets
from megatron_ext.convert.hf_config import hf_config_from_architecture
from megatron_ext.convert.locate import locate_checkpoint
from megatron_ext.convert.output_dir import check_output_dir, staged_output_dir
from megatron_ext.convert.safetensors_io import TensorSpec, write_sharded_safetensors
from megatron_ext.convert.tensor_map import conversion_order, hf_tensor_shapes, megatron_tensor_shapes
from megatron_ext.training.checkpoint_manifest import throughput
from megatron_ext.training.recipe_changes import saved_model_section

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Checkpoint entries that are not model weights.
_NON_MODEL_PREFIXES = ("optimizer.", "rng_state", "common_state")


@dataclass(frozen=True)
class ExportResult:
    output: Path
    checkpoint: Path
    architecture: LlamaArchitecture
    dtype: torch.dtype
    shards: List[str]
    # What the checksum verification did, for the report ("verified 52 MB in ...").
    checksums: str


def model_config_from_checkpoint(common: dict, where: Path) -> ModelConfig:
    """The model a training checkpoint was trained as (its recipe), or an import's record."""
    model = saved_model_section(common)
    if model is None:
        raise ConversionError(f"{where}: the checkpoint stores no recipe; pass the recipe it was trained with (--recipe)")
    return model_config_from_dict(model, f"{where} (stored model section)")


def check_megatron_tensors(reader: DistCheckpointReader, arch: LlamaArchitecture) -> None:
    expected = megatron_tensor_shapes(arch)
    found = {key: shape for key, shape in reader.tensor_shapes().items() if not key.startswith(_NON_MODEL_PREFIXES)}
    problems = []
    missing = [key for key in expected if key not in found]
    if missing:
        problems.append(f"missing tensors: {summarize(missing)}")
    extra = [key for key in found if key not in expected]
    if extra:
        problems.append(f"model tensors a Llama of this recipe does not have: {summarize(extra)}")
    problems += [f"{key}: shape {list(found[key])}, the recipe implies {list(shape)}"
                 for key, shape in expected.items() if key in found and found[key] != shape]
    if problems:
        raise ConversionError(f"{reader.directory}: the checkpoint does not match its model config:\n  - "
                              + "\n  - ".join(problems))


def _hf_tensors(reader: DistCheckpointReader, arch: LlamaArchitecture,
                dtype: torch.dtype) -> Iterator[Tuple[str, torch.Tensor]]:
    for rule, layer in conversion_order(arch):
        tensor = reader.read(rule.megatron_key, layer)
        for name, part in zip(rule.hf_names(layer), rule.split(tensor)):
            yield name, part.to(dtype)


def _check_tokenizer_fits(directory: Path, arch: LlamaArchitecture) -> None:
    """Before anything is written: a tokenizer with more tokens than the model is another model's."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return
    tokens = len(AutoTokenizer.from_pretrained(directory))
    if tokens > arch.vocab_size:
        raise ConversionError(f"the tokenizer has {tokens} tokens but the model only {arch.vocab_size}: "
                              f"--tokenizer must be the tokenizer of this model")


def _check_config_with_transformers(directory: Path, arch: LlamaArchitecture) -> None:
    """Load the written config the way users will, and compare what matters."""
    try:
        from transformers import AutoConfig
    except ImportError:
        return
    config = AutoConfig.from_pretrained(directory)
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta,
                                                             **(config.rope_scaling or {})})
    seen = {"rope_theta": float(rope.get("rope_theta")), "rope_factor": rope.get("factor"),
            "max_position_embeddings": config.max_position_embeddings, "vocab_size": config.vocab_size}
    wanted = {"rope_theta": arch.rope_theta, "rope_factor": arch.rope_scaling_factor,
              "max_position_embeddings": arch.max_position_embeddings, "vocab_size": arch.vocab_size}
    if seen != wanted:
        raise ConversionError(f"transformers reads the exported config as {seen}, expected {wanted}")


def _verify(reader: DistCheckpointReader, verify_checksums: bool) -> str:
    if not verify_checksums:
        return "checksums not verified (--no-verify-checksums)"
    start = time.perf_counter()
    verified = reader.verify_checksums()
    if verified is None:
        return "the checkpoint records no checksums"
    return f"verified checksums of {throughput(verified, time.perf_counter() - start)}"


def export_hf_checkpoint(checkpoint: Path, output: Path, tokenizer_dir: Path, dtype: torch.dtype = torch.bfloat16,
                         model: Optional[ModelConfig] = None, max_position_embeddings: Optional[int] = None,
                         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
                         progress: bool = True, verify_checksums: bool = True) -> ExportResult:
    """``model`` overrides the model config stored in the checkpoint (needed when it has none).
    Every check of the input runs before anything is written."""
    checkpoint, output = Path(checkpoint), Path(output)
    check_output_dir(output, checkpoint, overwrite)
    path = locate_checkpoint(checkpoint)
    reader = DistCheckpointReader(path)
    arch = architecture_from_model_config(model or model_config_from_checkpoint(reader.common_state(), path))
    if max_position_embeddings:
        arch = replace(arch, max_position_embeddings=max_position_embeddings)
    check_megatron_tensors(reader, arch)
    assets = read_hf_assets(tokenizer_dir)
    _check_tokenizer_fits(assets.directory, arch)
    checksums = _verify(reader, verify_checksums)
    specs = [TensorSpec(name, shape, dtype) for name, shape in hf_tensor_shapes(arch).items()]
    with staged_output_dir(output) as staging, \
            tqdm(total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc="export",
                 disable=not progress) as bar:
        shards = write_sharded_safetensors(staging, specs, _hf_tensors(reader, arch, dtype), max_shard_bytes,
                                           on_written=bar.update)
        config = hf_config_from_architecture(arch, dtype, assets.token_ids)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_hf_assets(assets, staging)
        _check_config_with_transformers(staging, arch)
    return ExportResult(output=output.resolve(), checkpoint=path, architecture=arch, dtype=dtype, shards=shards,
                        checksums=checksums)
