"""Our streaming safetensors reader and writer against the reference library."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_ext.convert.errors import ConversionError
from megatron_ext.convert.safetensors_io import SafetensorsReader, TensorSpec, write_sharded_safetensors

TENSORS = {
    "a": torch.randn(3, 5, dtype=torch.bfloat16),
    "b": torch.randn(7, dtype=torch.float32),
    "c": torch.randn(2, 2, 2, dtype=torch.float16),
    "d": torch.tensor(3.5),
}


def test_reads_reference_files_including_indexed_shards(tmp_path):
    save_file({k: TENSORS[k] for k in "ab"}, tmp_path / "model-1.safetensors")
    save_file({k: TENSORS[k] for k in "cd"}, tmp_path / "model-2.safetensors")
    weight_map = {"a": "model-1.safetensors", "b": "model-1.safetensors", "c": "model-2.safetensors",
                  "d": "model-2.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    reader = SafetensorsReader(tmp_path)
    for name, tensor in TENSORS.items():
        assert torch.equal(reader.read(name), tensor) and reader.read(name).dtype == tensor.dtype


def test_writes_shards_the_reference_reads(tmp_path):
    specs = [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in TENSORS.items()]
    written = []
    names = write_sharded_safetensors(tmp_path, specs, iter(TENSORS.items()), max_shard_bytes=40,
                                      on_written=written.append)
    assert names == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors"]
    loaded = {}
    for name in names:
        loaded.update(load_file(tmp_path / name))
    assert all(torch.equal(loaded[k], v) for k, v in TENSORS.items())
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(written) == sum(t.nbytes for t in TENSORS.values())
    assert set(index["weight_map"]) == set(TENSORS)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ConversionError, match="only safetensors .* safe_serialization=True"):
        (tmp_path / "pytorch_model.bin").write_bytes(b"x")
        SafetensorsReader(tmp_path)
    save_file(TENSORS, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(ConversionError, match="model.safetensors: tensor . lies beyond the end of the file"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(ConversionError, match="names shard file.* gone.safetensors"):
        SafetensorsReader(tmp_path)
