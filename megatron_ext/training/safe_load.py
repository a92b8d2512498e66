"""Reading checkpoints that may be crafted or damaged: no code runs, missing data is named.

PyTorch's distributed checkpoint (DCP) reader unpickles ``.metadata`` with ``pickle.load`` and
every stored object (Megatron's common state, RNG state, optimizer param groups, layers'
``_extra_state``) with ``torch.load(weights_only=False)``: a crafted checkpoint runs any code
it likes when loaded. Neither DCP nor Megatron-Core offers a restricted mode, so while
``restricted_unpickling()`` is active those two sites use

- for ``.metadata``: an unpickler that admits only DCP's metadata classes, ``torch.Size`` and
  dtypes (``_METADATA_CLASSES``),
- for stored objects: ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler) that
  also admits the NumPy types of NumPy's RNG state.

Anything else is refused with ``UnsafeCheckpointError`` naming the global it asked for.
Tensor data is already read with ``weights_only=True`` by DCP.

Transformer Engine's FP8 delayed-scaling ``_extra_state`` (scales and amax histories) is a
plain pickle inside a uint8 tensor that TE unpickles itself, and TE 2.20 refuses to unless
NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1: without more, an FP8 run could never resume.
``trusted_te_extra_state`` unpickles each such payload first with Megatron-Core's restricted
unpickler (TE's recipe classes, tensors, nested tensor storage only through ``weights_only``);
if every one passes, it lets TE load them, having shown that they call nothing else.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from contextlib import contextmanager
from pathlib import Path, PosixPath, WindowsPath
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint import planner as dcp_planner
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from megatron_ext.training.checkpoint_files import CheckpointError, DamagedCheckpointError
from megatron_ext.training.checkpoint_manifest import check_sizes, read_manifest

METADATA_FILE = ".metadata"


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asks the unpickler for something no checkpoint holds."""


def _qualified(obj) -> tuple:
    return obj.__module__, obj.__qualname__


_METADATA_CLASSES = {_qualified(c) for c in (
    dcp_metadata.Metadata, dcp_metadata.TensorStorageMetadata, dcp_metadata.BytesStorageMetadata,
    dcp_metadata.ChunkStorageMetadata, dcp_metadata.TensorProperties, dcp_metadata.MetadataIndex,
    dcp_metadata.StorageMeta, dcp_metadata._MEM_FORMAT_ENCODING, dcp_filesystem._StorageInfo,
    dcp_planner.SavePlan, dcp_planner.WriteItem, dcp_planner.WriteItemType, dcp_planner.TensorWriteData,
    torch.Size, torch.serialization._get_layout, collections.OrderedDict,
    PosixPath, WindowsPath)}  # StorageMeta.checkpoint_id of a writer given a Path

# NumPy's RNG state (an ndarray of uint32) as pickled by NumPy's own reducer.
_OBJECT_GLOBALS = [np.ndarray, np.dtype, np.zeros(1).__reduce__()[0], type(np.dtype(np.uint32))]


def _refusal(where: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{where}: refused to unpickle {what}, which no checkpoint of this project holds: loading it could run "
        f"code (a crafted or foreign checkpoint). Nothing was loaded; load only checkpoints you trust")


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and "." not in name and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _refusal(self.where, f"{module}.{name}")


def unpickle_metadata(file, where: str) -> dcp_metadata.Metadata:
    try:
        metadata = _MetadataUnpickler(file, where).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated or garbage
        raise DamagedCheckpointError(f"{where}: unreadable ({describe(e)})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise DamagedCheckpointError(f"{where}: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


def load_object(buffer: io.BytesIO, where: str):
    """A stored object (torch.save format) through PyTorch's weights-only unpickler."""
    try:
        with torch.serialization.safe_globals(_OBJECT_GLOBALS):
            return torch.load(buffer, weights_only=True, map_location="cpu")
    except Exception as e:
        buffer.seek(0)
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(buffer)
        except Exception:
            unsafe = []
        allowed = {f"{m}.{n}" for m, n in map(_qualified, _OBJECT_GLOBALS)}
        unsafe = [name for name in unsafe if name not in allowed]
        if unsafe:
            raise _refusal(where, ", ".join(unsafe)) from None
        raise DamagedCheckpointError(f"{where}: unreadable ({describe(e)})") from None


def _read_metadata(self: FileSystemReader, *args, **kwargs) -> dcp_metadata.Metadata:
    """FileSystemReader.read_metadata (torch 2.13) with the restricted unpickler."""
    path = self._get_metadata_path(kwargs.get("rank"))
    with self.fs.create_stream(path, "rb") as f:
        metadata = unpickle_metadata(f, str(path))
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = dcp_metadata.StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


def _load_bytes(self: DefaultLoadPlanner, read_item, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes (torch 2.13) with the restricted object loader."""
    fqn = read_item.dest_index.fqn
    obj = load_object(value, f"stored object {fqn}")
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[fqn], obj)
    else:
        self.state_dict[fqn] = obj


@contextmanager
def restricted_unpickling() -> Iterator[None]:
    """Every DCP read in this block (ours and Megatron's) unpickles through the functions above."""
    saved = FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes
    FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes = _read_metadata, _load_bytes
    try:
        yield
    finally:
        FileSystemReader.read_metadata, DefaultLoadPlanner.load_bytes = saved


@contextmanager
def original_errors() -> Iterator[None]:
    """DCP wraps an error of any planner or storage step in CheckpointException, a BaseException
    (which ``except Exception`` misses) whose message is a traceback: raise the error itself."""
    try:
        yield
    except CheckpointException as e:
        (error, _), *_ = e.failures.values()
        raise error from None


def describe(error: BaseException) -> str:
    """'Type: first line' of an error, for one-line messages (DCP's own message is a traceback)."""
    if isinstance(error, CheckpointException):
        (error, _), *_ = error.failures.values()
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def read_checked(directory: Path) -> Tuple[Optional[dict], dcp_metadata.Metadata]:
    """(manifest or None, ``.metadata``) of a checkpoint whose files are all there in full."""
    manifest = read_manifest(directory)
    if manifest is not None:
        check_sizes(directory, manifest)
    return manifest, read_checked_metadata(directory)


def read_common_state(directory: Path) -> dict:
    """Megatron's common (non-tensor) state of a checkpoint, through the restricted unpicklers:
    the recipe, train state, schedule and layout of a training checkpoint. Call it after
    ``read_checked``, which names a missing or truncated file; anything else unreadable is
    named here."""
    from megatron.core.dist_checkpointing import load_common_state_dict

    try:
        with restricted_unpickling(), original_errors():
            return load_common_state_dict(str(directory))
    except CheckpointError:
        raise
    except Exception as e:  # e.g. garbage where the common state is stored
        raise DamagedCheckpointError(f"{directory}: could not read its common state ({describe(e)})") from None


def read_checked_metadata(directory: Path) -> dcp_metadata.Metadata:
    """The checkpoint's ``.metadata`` (restricted unpickling), after checking that every file and
    byte range it points to exists: a missing or truncated shard is named with a tensor in it."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not path.is_file():
        raise DamagedCheckpointError(f"{path} is missing: not a complete checkpoint")
    with open(path, "rb") as f:
        metadata = unpickle_metadata(f, str(path))
    sizes: dict = {}
    for index, info in (metadata.storage_data or {}).items():
        file = directory / info.relative_path
        if file.name not in sizes:
            sizes[file.name] = file.stat().st_size if file.is_file() else None
        size = sizes[file.name]
        if size is None:
            raise DamagedCheckpointError(f"{file} is missing (it holds {index.fqn}, among others)")
        if info.offset + info.length > size:
            raise DamagedCheckpointError(f"{file} is truncated: {size} bytes, but {index.fqn} is stored at bytes "
                                         f"{info.offset}-{info.offset + info.length}")
    return metadata


_TE_UNSAFE_PICKLE_ENV = "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE"


def check_te_extra_state(payload: torch.Tensor, where: str) -> None:
    """Refuse a TE ``_extra_state`` payload that would call anything but TE's recipe classes and
    tensors. Megatron-Core's ``SafeUnpickler`` admits exactly what TE's FP8 state pickles (its own
    TE extension decodes extra state with it); importing megatron.core also routes nested tensor
    data (``torch.storage._load_from_bytes``) through ``weights_only``."""
    from megatron.core.safe_globals import SafeUnpickler

    try:
        SafeUnpickler(io.BytesIO(payload.detach().cpu().numpy().tobytes())).load()
    except Exception as e:  # a disallowed class, a nested payload weights_only refuses, or garbage
        raise UnsafeCheckpointError(f"{where}: refused, not a Transformer Engine FP8 state as this project "
                                    f"writes it ({describe(e)}); load only checkpoints you trust") from None


@contextmanager
def trusted_te_extra_state(state_dict: dict) -> Iterator[None]:
    """Check every non-empty TE ``_extra_state`` of a model state dict, then let TE unpickle them."""
    payloads = {k: v for k, v in state_dict.items()
                if k.endswith("._extra_state") and isinstance(v, torch.Tensor) and v.numel()}
    for key, value in payloads.items():
        check_te_extra_state(value, f"model state {key}")
    saved = os.environ.get(_TE_UNSAFE_PICKLE_ENV)
    if payloads:
        os.environ[_TE_UNSAFE_PICKLE_ENV] = "1"
    try:
        yield
    finally:
        if payloads:
            if saved is None:
                os.environ.pop(_TE_UNSAFE_PICKLE_ENV, None)
            else:
                os.environ[_TE_UNSAFE_PICKLE_ENV] = saved
