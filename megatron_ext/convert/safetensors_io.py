"""Safetensors read and written one tensor at a time with plain file I/O.

Why not ``safetensors.safe_open``: it memory-maps whole shards, and every page touched stays
in the process's resident set while the shard is open, so an 8B conversion would appear to
hold the model. Here a read allocates exactly one tensor and fills it with ``readinto``; a
write lays out the header from the planned shapes first, then streams the tensors in order.
The format (8-byte little-endian header length, JSON header, raw little-endian data) is the
documented safetensors layout; tests read our files back with the ``safetensors`` library.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from megatron_ext.convert.errors import ConversionError, summarize

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: torch.dtype
    shape: Tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> Tuple[dict, int]:
    """(header, offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(_MAX_HEADER_BYTES, size - 8):
            raise ConversionError(f"{path}: not a safetensors file (header length {length} for a {size}-byte file)")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: corrupt safetensors header: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + length


def _stored_tensors(path: Path) -> Dict[str, StoredTensor]:
    header, data_start = _read_header(path)
    file_size = path.stat().st_size
    tensors = {}
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        if data_start + end > file_size:
            raise ConversionError(f"{path}: tensor {name} lies beyond the end of the file (truncated download?)")
        tensors[name] = StoredTensor(path, DTYPES[info["dtype"]], tuple(info["shape"]), data_start + begin, end - begin)
    return tensors


def _readinto_exactly(f, view: memoryview, where: str) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise ConversionError(f"{where}: unexpected end of file")
        done += n


class SafetensorsReader:
    """All tensors of an HF model directory (one ``model.safetensors`` or an indexed set of shards)."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        index = directory / INDEX_NAME
        if index.is_file():
            try:
                weight_map: Dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConversionError(f"{index}: not a valid safetensors index ({e})") from None
            files = sorted(set(weight_map.values()))
        elif (directory / SINGLE_NAME).is_file():
            weight_map, files = {}, [SINGLE_NAME]
        else:
            found = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
            hint = f" (found {', '.join(found)}: re-save it with safe_serialization=True)" if found else ""
            raise ConversionError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}; only safetensors weights are "
                                  f"supported{hint}")
        missing_files = [name for name in files if not (directory / name).is_file()]
        if missing_files:
            raise ConversionError(f"{index}: names shard file(s) that do not exist: {', '.join(missing_files)}")
        self.tensors: Dict[str, StoredTensor] = {}
        for name in files:
            self.tensors.update(_stored_tensors(directory / name))
        absent = sorted(name for name, file in weight_map.items() if name not in self.tensors)
        if absent:
            raise ConversionError(f"{index}: lists tensor(s) its shard files do not hold: {summarize(absent)}")

    def read(self, name: str) -> torch.Tensor:
        stored = self.tensors[name]
        tensor = torch.empty(stored.shape, dtype=stored.dtype)
        if stored.nbytes != tensor.numel() * tensor.element_size():
            raise ConversionError(f"{stored.file}: tensor {name} has {stored.nbytes} bytes, "
                                  f"its shape {list(stored.shape)} and dtype need {tensor.nbytes}")
        if stored.nbytes:
            with open(stored.file, "rb", buffering=0) as f:
                f.seek(stored.start)
                _readinto_exactly(f, memoryview(tensor.view(-1).view(torch.uint8).numpy()), f"{stored.file} ({name})")
        return tensor


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: List[TensorSpec], max_shard_bytes: int) -> List[List[TensorSpec]]:
    """Consecutive groups of at most max_shard_bytes (a larger tensor gets a shard to itself)."""
    shards: List[List[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header_bytes(specs: List[TensorSpec]) -> bytes:
    header: Dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data section 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def shard_file_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_sharded_safetensors(directory: Path, specs: List[TensorSpec], tensors: Iterable[Tuple[str, torch.Tensor]],
                              max_shard_bytes: int, on_written: Optional[Callable[[int], None]] = None) -> List[str]:
    """Write ``tensors`` (in ``specs`` order, each produced only when needed) as shards plus index.

    Returns the shard file names. Every tensor is checked against its spec as it arrives.
    """
    shards = plan_shards(specs, max_shard_bytes)
    names = [shard_file_name(i, len(shards)) for i in range(len(shards))]
    stream: Iterator[Tuple[str, torch.Tensor]] = iter(tensors)
    weight_map: Dict[str, str] = {}
    for file_name, shard in zip(names, shards):
        with open(Path(directory) / file_name, "wb") as f:
            f.write(_header_bytes(shard))
            for spec in shard:
                name, tensor = next(stream)
                if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                    raise AssertionError(f"expected {spec} next, got {name} {list(tensor.shape)} {tensor.dtype}")
                f.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))
                weight_map[name] = file_name
                if on_written:
                    on_written(spec.nbytes)
            f.flush()
            os.fsync(f.fileno())
    if next(stream, None) is not None:
        raise AssertionError("more tensors than planned")
    index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs)}, "weight_map": weight_map}
    (Path(directory) / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names
