"""Megatron ``torch_dist`` checkpoints written and read one tensor region at a time.

A torch_dist checkpoint is a PyTorch Distributed Checkpoint (DCP): ``.metadata`` (global
shape and chunk list of every tensor), ``*.distcp`` data files, and Megatron's
``metadata.json``. Megatron's own save and load go through whole model state dicts; here
DCP is driven directly with planners that (save) produce each chunk only when the writer
asks for it and (load) fill exactly one requested region, e.g. one layer of a stacked
tensor, whatever chunking (TP/CP/DP layout) the checkpoint was written with.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_ext.convert.errors import ConversionError
from megatron_ext.training.checkpoint_manifest import (
    checksum_files,
    data_files,
    has_checksums,
    verify_checksums,
    write_manifest,
)
from megatron_ext.training.safe_load import describe, original_errors, read_checked, read_common_state

BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1}


def sharded_object_key(key: str, index: int = 0, count: int = 1) -> str:
    """The DCP name of Megatron's ShardedObject ``key`` at ``index`` of ``count`` (its unique_key)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(key, None, (count,), (index,)).unique_key


# -- writing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LazyChunk:
    """A box of a global tensor whose data is computed only when it is written."""

    key: str
    global_shape: Tuple[int, ...]
    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]


class _LazySavePlanner(DefaultSavePlanner):
    def __init__(self, chunks: Sequence[LazyChunk], objects: Dict[str, object],
                 on_written: Optional[Callable[[int], None]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._chunks = {MetadataIndex(c.key, torch.Size(c.offsets)): c for c in chunks}
        self._objects = objects
        self._on_written = on_written

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=index, type=WriteItemType.SHARD,
                           tensor_data=TensorWriteData(
                               chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)),
                               properties=TensorProperties(dtype=c.dtype), size=torch.Size(c.global_shape)))
                 for index, c in self._chunks.items()]
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in self._objects]
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem):
        if write_item.type == WriteItemType.BYTE_IO:
            buffer = io.BytesIO()
            torch.save([self._objects[write_item.index.fqn]], buffer)  # Megatron's ShardedObject encoding
            return buffer
        chunk = self._chunks[MetadataIndex(write_item.index.fqn, write_item.index.offset)]
        tensor = chunk.produce()
        if tuple(tensor.shape) != chunk.sizes or tensor.dtype != chunk.dtype:
            raise AssertionError(f"{chunk.key}: produced {list(tensor.shape)} {tensor.dtype}, "
                                 f"planned {list(chunk.sizes)} {chunk.dtype}")
        if self._on_written:
            self._on_written(tensor.numel() * tensor.element_size())
        return tensor.contiguous()


def write_dist_checkpoint(directory: Path, chunks: Sequence[LazyChunk], objects: Dict[str, object],
                          on_written: Optional[Callable[[int], None]] = None, written_by: str = "conversion") -> None:
    """Write a torch_dist checkpoint; ``objects`` maps DCP names to picklable values.

    DCP checks that the chunks tile every tensor exactly. ``metadata.json``, which Megatron
    requires to call a directory a checkpoint, is written after the data, then the manifest
    (sizes and checksums, as training writes them).
    """
    directory = Path(directory)
    # One thread and no copy-ahead: DCP's serial loader asks for one chunk at a time (and never
    # touches CUDA, even on a GPU host).
    writer = FileSystemWriter(directory, single_file_per_rank=True, sync_files=True, thread_count=1,
                              per_thread_copy_ahead=0)
    with original_errors():
        dcp.save({}, storage_writer=writer, planner=_LazySavePlanner(chunks, objects, on_written), no_dist=True)
    (directory / "metadata.json").write_text(json.dumps(BACKEND))
    write_manifest(directory, checksum_files(directory, data_files(directory)), run_id=None, iteration=None,
                   written_by=written_by)


# -- reading ---------------------------------------------------------------------------------
class _MetadataOnceReader(FileSystemReader):
    """Hands DCP the ``.metadata`` that was read (restricted unpickling) and checked once."""

    def __init__(self, path: Path, metadata: Metadata):
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args, **kwargs) -> Metadata:
        return self._metadata


def _narrow(tensor: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    for dim, (offset, length) in enumerate(zip(offsets, lengths)):
        tensor = tensor.narrow(dim, offset, length)
    return tensor


class _RegionLoadPlanner(LoadPlanner):
    """Loads the box at ``offsets`` with ``dest``'s shape of tensor ``key`` into ``dest``."""

    def __init__(self, key: str, dest: torch.Tensor, offsets: Tuple[int, ...]):
        self.key, self.dest, self.offsets = key, dest, offsets
        self.elements_read = 0

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        box = ChunkStorageMetadata(offsets=torch.Size(self.offsets), sizes=self.dest.shape)
        return LoadPlan(create_read_items_for_chunk_list(self.key, self.metadata.state_dict_metadata[self.key], [box]))

    def create_global_plan(self, global_plan: List[LoadPlan]) -> List[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise AssertionError("region reads hold tensors only")

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        self.elements_read += read_item.lengths.numel()
        return _narrow(self.dest, read_item.dest_offsets, read_item.lengths)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass


class DistCheckpointReader:
    """Global tensors (or single layers of stacked ones) of a torch_dist checkpoint directory.

    Opening it checks that every file is there in full (manifest sizes, ``.metadata``'s byte
    ranges) and reads ``.metadata`` with the restricted unpickler; ``verify_checksums`` reads
    every file once more. A damaged or crafted checkpoint is refused with training's
    ``CheckpointError`` (the same checks and messages), other bad input with ``ConversionError``.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        marker = self.directory / "metadata.json"
        try:
            backend = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConversionError(f"{self.directory}: not a Megatron distributed checkpoint ({e})") from None
        if backend.get("sharded_backend") != "torch_dist":
            raise ConversionError(f"{marker}: backend {backend.get('sharded_backend')!r} is not supported "
                                  f"(only torch_dist, Megatron's default)")
        self.manifest, self.metadata = read_checked(self.directory)
        self._storage = _MetadataOnceReader(self.directory, self.metadata)

    def verify_checksums(self) -> Optional[int]:
        """Bytes verified against the manifest's CRC-32s; None if it records none."""
        if not has_checksums(self.manifest):
            return None
        return verify_checksums(self.directory, self.manifest, sorted(self.manifest["files"]))

    def tensor_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {key: tuple(md.size) for key, md in self.metadata.state_dict_metadata.items()
                if isinstance(md, TensorStorageMetadata)}

    def read(self, key: str, layer: Optional[int] = None) -> torch.Tensor:
        """The whole tensor, or its slice ``[layer]`` along the leading (layer) axis."""
        md = self.metadata.state_dict_metadata[key]
        shape = tuple(md.size)
        dest = torch.empty((1, *shape[1:]) if layer is not None else shape, dtype=md.properties.dtype)
        offsets = (layer,) + (0,) * (len(shape) - 1) if layer is not None else (0,) * len(shape)
        planner = _RegionLoadPlanner(key, dest, offsets)
        try:
            with original_errors():
                dcp.load({}, storage_reader=self._storage, planner=planner, no_dist=True)
        except Exception as e:  # e.g. a damaged shard without a manifest: name the tensor
            raise ConversionError(f"{self.directory}: could not read {key} ({describe(e)})") from None
        if planner.elements_read != dest.numel():
            raise ConversionError(f"{self.directory}: the checkpoint's chunks of {key} cover "
                                  f"{planner.elements_read} of the {dest.numel()} values requested")
        return dest[0] if layer is not None else dest

    def common_state(self) -> dict:
        """Megatron's common (non-tensor) state: for training checkpoints, the recipe and more."""
        return read_common_state(self.directory)
