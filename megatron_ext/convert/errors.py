"""The exception type of the conversion's own checks (a damaged or crafted Megatron checkpoint is
refused with training's CheckpointError), and how its messages list names."""

from typing import List


class ConversionError(ValueError):
    """Bad input to a conversion. The message names the file, field or tensor and says why."""


def summarize(names: List[str], limit: int = 8) -> str:
    """"a, b, c and 5 more": long lists of tensor names stay readable."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
