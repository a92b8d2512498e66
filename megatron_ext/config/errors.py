"""The one error type of recipe loading and validation (its own module: loader and validate
both raise it, and neither imports the other for it)."""

from __future__ import annotations

from typing import Sequence


class RecipeError(ValueError):
    """A recipe problem; each message names the key (and file) and says why."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid recipe:\n" + "\n".join(f"  - {p}" for p in self.problems))
