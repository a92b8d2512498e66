"""Output directories that appear complete or not at all.

Everything is written into a hidden sibling (``.NAME.incomplete-HOST-PID``), which is renamed to
NAME only after the conversion succeeded. An existing NAME is refused unless overwriting was
asked for, and even then it is replaced only after the new one is complete. Staging
directories of conversions that were killed (their process on this host is gone) are
removed by the next conversion to the same NAME; those of other hosts are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from megatron_ext.convert.errors import ConversionError
from megatron_ext.processes import process_alive, this_host


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


def remove_stale_staging(output: Path) -> None:
    """Remove ``.NAME.incomplete-HOST-PID`` / ``.NAME.replaced-HOST-PID`` of dead processes on this
    host (a name without HOST, from older versions, counts as this host's)."""
    output = Path(output).resolve()
    pattern = re.compile(re.escape(f".{output.name}.") + r"(?:incomplete|replaced)-(?:(.+)-)?(\d+)")
    for path in output.parent.glob(f".{output.name}.*"):
        match = pattern.fullmatch(path.name)
        if match and (match.group(1) or this_host()) == this_host() and not process_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_output_dir(output: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``output`` when the block succeeds."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output)
    me = f"{this_host()}-{os.getpid()}"
    staging = output.parent / f".{output.name}.incomplete-{me}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        replaced = output.parent / f".{output.name}.replaced-{me}"
        os.rename(output, replaced)
        os.rename(staging, output)
        shutil.rmtree(replaced)
    else:
        os.rename(staging, output)
