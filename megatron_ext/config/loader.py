"""Load a recipe: YAML file(s) + ``key=value`` overrides -> a typed, validated ``Recipe``.

A recipe may build on others with a ``base:`` entry (a path or a list of paths, relative
to the recipe file). Bases are merged first, in order, then the recipe, then the
command-line overrides. Every error names the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from megatron_ext.config.schema import Recipe


class RecipeError(ValueError):
    """A recipe problem; the message names the key(s) and says why."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid recipe:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError([f"recipe file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError([f"{path}: not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}"])
    return data


def _expand_bases(path: Path, seen: tuple = ()) -> List[dict]:
    """The recipe's chain of YAML mappings, bases first."""
    path = path.resolve()
    if path in seen:
        raise RecipeError([f"base: circular reference through {path}"])
    data = _read_yaml(path)
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    chain: List[dict] = []
    for base in bases:
        chain += _expand_bases(path.parent / base, seen + (path,))
    return chain + [data]


def _explain(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "?"
    reason = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError):
        return f"{key}: unknown key. {reason}"
    if isinstance(e, ValidationError):
        return f"{key}: wrong type. {reason}"
    return f"{key}: {reason}"


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise RecipeError([f"override '{o}' is not of the form key=value" for o in bad])
    return OmegaConf.from_dotlist(list(overrides))


def compose(path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Merge schema defaults, the recipe chain and overrides (types checked, no validation)."""
    merged = OmegaConf.structured(Recipe)
    layers = [OmegaConf.create(d) for d in _expand_bases(Path(path))]
    layers.append(_parse_overrides(overrides))
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            raise RecipeError([_explain(e)]) from None
    try:
        OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise RecipeError([f"{getattr(e, 'full_key', '?')}: required value is missing"]) from None
    return merged


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), world_size: Optional[int] = None
) -> Recipe:
    """Load, type-check and validate a recipe. Raises RecipeError naming every bad key."""
    from megatron_ext.config.validate import validate

    recipe: Recipe = OmegaConf.to_object(compose(path, overrides))
    validate(recipe, world_size=world_size)
    return recipe


def to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe, for logs and reproducibility."""
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))
