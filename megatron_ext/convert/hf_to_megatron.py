"""HF Llama directory -> Megatron torch_dist checkpoint holding the model (no optimizer).

The result is what ``checkpoint.pretrained_checkpoint`` loads at any TP/CP/DP layout: the
dist checkpoint stores global tensors. It is written tensor by tensor, each Megatron tensor
(one layer of a stacked one) computed from its HF tensors only when DCP writes it, so peak
memory is a few tensors whatever the model size. RoPE theta and the context length are not
weights: the training recipe sets them. ``model.yaml`` next to the checkpoint gives the
recipe ``model:`` section that matches the HF model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from megatron_ext.config.schema import ModelConfig
from megatron_ext.convert.architecture import LlamaArchitecture, model_config_from_architecture, model_yaml
from megatron_ext.convert.dist_checkpoint_io import LazyChunk, sharded_object_key, write_dist_checkpoint
from megatron_ext.convert.errors import ConversionError, summarize
from megatron_ext.convert.hf_config import architecture_from_hf_config, read_config_json
from megatron_ext.convert.output_dir import check_output_dir, staged_output_dir
from megatron_ext.convert.safetensors_io import SafetensorsReader
from megatron_ext.convert.tensor_map import (
    EXTRA_STATE_MODULES,
    FINAL_NORM_EXTRA_STATE,
    IGNORED_HF_SUFFIXES,
    TensorRule,
    conversion_order,
    hf_tensor_shapes,
)
from megatron_ext.training.recipe_changes import IMPORT_RECORD

MODEL_YAML = "model.yaml"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class ImportResult:
    output: Path
    model: ModelConfig
    dtype: torch.dtype
    num_bytes: int


def _check_tied_head(source: SafetensorsReader, where: Path) -> None:
    if not torch.equal(source.read("lm_head.weight"), source.read("model.embed_tokens.weight")):
        raise ConversionError(f"{where}: config.json says tie_word_embeddings=true, but lm_head.weight differs from "
                              f"model.embed_tokens.weight; set tie_word_embeddings=false if the head is separate")


def check_hf_tensors(source: SafetensorsReader, arch: LlamaArchitecture, where: Path) -> None:
    """Every tensor the config implies is there with its shape and a float dtype; nothing else is."""
    expected = hf_tensor_shapes(arch)
    found = {name: stored for name, stored in source.tensors.items() if not name.endswith(IGNORED_HF_SUFFIXES)}
    if arch.tie_embeddings and "lm_head.weight" in found:
        _check_tied_head(source, where)
        del found["lm_head.weight"]
    problems = []
    missing = [name for name in expected if name not in found]
    if missing:
        hint = " (config.json says tie_word_embeddings=false)" if missing == ["lm_head.weight"] else ""
        problems.append(f"missing tensors: {summarize(missing)}{hint}")
    extra = [name for name in found if name not in expected]
    if extra:
        problems.append(f"tensors a Llama with this config.json does not have: {summarize(extra)}")
    problems += [f"{name}: shape {list(found[name].shape)}, config.json implies {list(shape)}"
                 for name, shape in expected.items() if name in found and found[name].shape != shape]
    problems += [f"{name}: dtype {found[name].dtype} is not a floating-point weight"
                 for name in expected if name in found and found[name].dtype not in FLOAT_DTYPES]
    if problems:
        raise ConversionError(f"{where}: the weights do not match config.json:\n  - " + "\n  - ".join(problems))


def _source_dtype(source: SafetensorsReader, arch: LlamaArchitecture, where: Path) -> torch.dtype:
    dtypes = {source.tensors[name].dtype for name in hf_tensor_shapes(arch)}
    if len(dtypes) > 1:
        raise ConversionError(f"{where}: the weights mix dtypes {sorted(map(str, dtypes))}; choose one with --dtype")
    return dtypes.pop()


def _produce(source: SafetensorsReader, rule: TensorRule, layer: Optional[int], dtype: torch.dtype) -> torch.Tensor:
    tensor = rule.merge([source.read(name) for name in rule.hf_names(layer)]).to(dtype)
    return tensor.unsqueeze(0) if rule.per_layer else tensor


def _chunks(source: SafetensorsReader, arch: LlamaArchitecture, dtype: torch.dtype) -> List[LazyChunk]:
    chunks = []
    for rule, layer in conversion_order(arch):
        shape = rule.global_shape(arch.num_layers)
        offsets = (layer,) + (0,) * len(rule.megatron_shape) if rule.per_layer else (0,) * len(shape)
        sizes = (1, *rule.megatron_shape) if rule.per_layer else shape
        chunks.append(LazyChunk(rule.megatron_key, shape, offsets, sizes, dtype,
                                partial(_produce, source, rule, layer, dtype)))
    return chunks


def _objects(arch: LlamaArchitecture, record: dict) -> Dict[str, object]:
    """Per-layer ``_extra_state`` the layer specs request on load, and the common state."""
    objects: Dict[str, object] = {
        sharded_object_key(f"{module}._extra_state", layer, arch.num_layers): None
        for module in EXTRA_STATE_MODULES for layer in range(arch.num_layers)
    }
    objects[sharded_object_key(FINAL_NORM_EXTRA_STATE)] = None
    objects[sharded_object_key("common_state")] = {IMPORT_RECORD: record}
    return objects


def import_hf_checkpoint(hf_dir: Path, output: Path, dtype: Optional[torch.dtype] = None,
                         make_vocab_size_divisible_by: int = ModelConfig.make_vocab_size_divisible_by,
                         overwrite: bool = False, progress: bool = True) -> ImportResult:
    hf_dir, output = Path(hf_dir), Path(output)
    check_output_dir(output, hf_dir, overwrite)
    config = read_config_json(hf_dir)
    arch = architecture_from_hf_config(config, make_vocab_size_divisible_by, where=str(hf_dir / "config.json"))
    source = SafetensorsReader(hf_dir)
    check_hf_tensors(source, arch, hf_dir)
    dtype = dtype or _source_dtype(source, arch, hf_dir)
    model = model_config_from_architecture(arch, make_vocab_size_divisible_by)
    record = {"source": str(hf_dir.resolve()), "model": asdict(model), "dtype": str(dtype), "hf_config": config}
    chunks, objects = _chunks(source, arch, dtype), _objects(arch, record)
    total = sum(torch.Size(c.sizes).numel() for c in chunks) * torch.empty((), dtype=dtype).element_size()
    with staged_output_dir(output) as staging, \
            tqdm(total=total, unit="B", unit_scale=True, desc="import", disable=not progress) as bar:
        write_dist_checkpoint(staging, chunks, objects, on_written=bar.update,
                              written_by="tools/convert_hf_to_megatron.py")
        comment = (f"Recipe model section of {hf_dir.resolve()} (tools/convert_hf_to_megatron.py).\n"
                   f"rotary_base and max_position_embeddings are the HF model's; stage recipes set their own.")
        (staging / MODEL_YAML).write_text(model_yaml(model, comment))
    return ImportResult(output=output.resolve(), model=model, dtype=dtype, num_bytes=total)
