"""Output directories that appear complete or not at all.

Everything is written into a hidden sibling (``.NAME.incomplete-PID``), which is renamed to
NAME only after the conversion succeeded. An existing NAME is refused unless overwriting was
asked for, and even then it is replaced only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from megatron_ext.convert.errors import ConversionError


def check_output_dir(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing output without ``overwrite``, or one that would
    replace (part of) the source."""
    output, source = Path(output).resolve(), Path(source).resolve()
    if output == source or output in source.parents:
        raise ConversionError(f"output {output} would replace the input {source}; choose another directory")
    if source in output.parents:
        raise ConversionError(f"output {output} lies inside the input {source}; choose another directory")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a directory")
    if output.exists() and not overwrite:
        raise ConversionError(f"output {output} already exists; pass --overwrite to replace it")


@contextmanager
def staged_output_dir(output: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``output`` when the block succeeds."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.incomplete-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        replaced = output.parent / f".{output.name}.replaced-{os.getpid()}"
        os.rename(output, replaced)
        os.rename(staging, output)
        shutil.rmtree(replaced)
    else:
        os.rename(staging, output)
