"""Which Megatron checkpoint a path given to the export tool means (no torch: checked first)."""

from __future__ import annotations

from pathlib import Path

from megatron_ext.convert.errors import ConversionError
from megatron_ext.training.checkpoint_files import find_checkpoint


def locate_checkpoint(path: Path) -> Path:
    """The iteration directory of a training run's save directory, or ``path`` itself
    (``CheckpointError`` if its tracker names none that is complete)."""
    found = find_checkpoint(path)
    if found is None:
        raise ConversionError(f"{path}: no Megatron checkpoint (neither metadata.json nor "
                              f"latest_checkpointed_iteration.txt)")
    return found
