"""Load a recipe: YAML file(s) + ``key=value`` overrides -> a typed, validated ``Recipe``.

A recipe may build on others with a ``base:`` entry (a path or a list of paths, relative
to the recipe file). Bases are merged first, in order, then the recipe, then the
command-line overrides. Every setting is merged on its own, so that every unknown key,
wrong type and missing value of every file is reported at once, each with its key and the
file (or "command line") it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from megatron_ext.config.errors import RecipeError
from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import validate

__all__ = ["RecipeError", "compose", "find_recipe", "load_recipe", "to_yaml"]

# The recipes shipped with the package (a link to the checkout's recipes/ folder, installed
# as package data), so that `recipes/tiny/x.yaml` or `tiny/x.yaml` works from any directory.
PACKAGED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
COMMAND_LINE = "command line"
# A plain node reference inside an interpolation: ${checkpoint.save}, not ${oc.env:X} or ${.x}.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.\[\]]*)\}")
_ABSENT = object()


def find_recipe(path: str | Path) -> Path:
    """``path`` as given, else the packaged recipe of that name (with or without ``recipes/``)."""
    path = Path(path)
    if path.is_file():
        return path
    relative = path.relative_to("recipes") if path.parts[:1] == ("recipes",) else path
    packaged = PACKAGED_RECIPES / relative
    if path.is_absolute() or not packaged.is_file():
        raise RecipeError([f"recipe file not found: {path} (nor among the packaged recipes, {PACKAGED_RECIPES})"])
    return packaged


def _shown(path: Path) -> str:
    """The path relative to the working directory when it lies below it (shorter messages)."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    """One recipe file as a plain mapping (interpolations left as text).

    OmegaConf's YAML loader, not yaml.safe_load: it refuses duplicate keys (PyYAML silently
    keeps the last one) and caps how far YAML aliases may expand (a few hundred bytes of
    nested aliases would otherwise take minutes and gigabytes), before building anything.
    """
    if not path.is_file():
        raise RecipeError([f"recipe file not found: {path}"])
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as e:
        line = f", line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise RecipeError([f"{_shown(path)}{line}: not valid YAML: {e.problem}"]) from None
    except (yaml.YAMLError, OmegaConfBaseException, OSError, UnicodeDecodeError) as e:
        raise RecipeError([f"{_shown(path)}: not a readable YAML mapping: {' '.join(str(e).split())}"]) from None
    if not isinstance(loaded, DictConfig):
        raise RecipeError([f"{_shown(path)}: a recipe must be a mapping of keys, got a list"])
    return OmegaConf.to_container(loaded, resolve=False)


def _expand_bases(path: Path, seen: tuple = ()) -> List[Tuple[dict, str]]:
    """The recipe's chain of (mapping, file shown in messages), bases first."""
    path = path.resolve()
    if path in seen:
        raise RecipeError([f"base: circular reference through {_shown(path)}"])
    data = _read_yaml(path)
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError([f"base: must be a path or a list of paths, got {bases!r} (in {_shown(path)})"])
    chain: List[Tuple[dict, str]] = []
    for base in bases:
        chain += _expand_bases(path.parent / base, seen + (path,))
    return chain + [(data, _shown(path))]


def _settings(data: dict, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) for every leaf of a mapping; a list of mappings (data.domains)
    first as a list of empty entries, then each entry's keys, so that each is checked."""
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            yield from _settings(value, key + ".")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield key, [{} for _ in value]
            for i, entry in enumerate(value):
                yield from _settings(entry, f"{key}.{i}.")
        else:
            yield key, value


def _overrides(overrides: Iterable[str], problems: List[str]) -> List[Tuple[str, Any]]:
    settings = []
    for override in overrides:
        key, equals, text = override.partition("=")
        if not key or not equals:
            problems.append(f"override '{override}' is not of the form key=value")
            continue
        try:  # OmegaConf's dotlist parser reads the value as YAML, with the same loader as the files
            settings.append((key, OmegaConf.to_container(OmegaConf.from_dotlist(["v=" + text]))["v"]))
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            problems.append(f"{key}: value '{text}' is not valid YAML: {' '.join(str(e).split())} ({COMMAND_LINE})")
    return settings


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    """``OmegaConf.update`` (which handles list indices: data.domains.1.share), plus: an
    index must exist, and a key below a null section (data.synthetic.period when
    data.synthetic is null) fills that section from its defaults, as a nested mapping would."""
    parts = re.sub(r"\[(-?\d+)\]", r".\1", key).split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, ListConfig):
            if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
                raise RecipeError([f"{'.'.join(parts[:i + 1])}: no such entry, the list has {len(node)}"])
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node and not OmegaConf.is_interpolation(node, part):
            if node[part] is None:
                for name in reversed(parts[i + 1:]):
                    value = {name: value}
                key = ".".join(parts[:i + 1])
                break
            node = node[part]
        else:
            break
    OmegaConf.update(cfg, key, value, merge=True)


def _explain(e: OmegaConfBaseException, key: str) -> str:
    key = getattr(e, "full_key", None) or key
    reason = str(e).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        return f"{key}: unknown key. {reason}"
    if isinstance(e, ValidationError):
        return f"{key}: wrong type. {reason}"
    return f"{key}: {reason}"


def _merge(cfg: DictConfig, pairs: Iterable[Tuple[str, Any]], source: str, problems: List[str]) -> None:
    """Set each (key, value) of one file or of the command line, leaf by leaf."""
    failed: List[str] = []
    for key, value in (leaf for pair in pairs for leaf in _settings(dict([pair]))):
        if any(key.startswith(f + ".") for f in failed):
            continue  # inside a setting already refused: one message is enough
        try:
            _set(cfg, key, value)
        except RecipeError as e:
            problems += [f"{p} ({source})" for p in e.problems]
            failed.append(key)
        except OmegaConfBaseException as e:
            problems.append(f"{_explain(e, key)} ({source})")
            failed.append(key)


def _leaf_keys(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        key = f"{prefix}[{name}]" if isinstance(node, list) else f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, (dict, list)):
            yield from _leaf_keys(value, key)
        else:
            yield key, value


def _resolve_interpolations(cfg: DictConfig, problems: List[str]) -> None:
    """Resolve every ${...} now, naming the key of any that fails. A path built from a null
    one (tensorboard_dir: ${checkpoint.save}/tensorboard, save=null) becomes null, not the
    text "None/tensorboard" that would create ./None/ on disk."""
    for key, raw in _leaf_keys(OmegaConf.to_container(cfg, resolve=False)):
        if not isinstance(raw, str) or "${" not in raw:
            continue
        try:
            # A reference to no key is not null: resolving it below names the typo.
            refs = [OmegaConf.select(cfg, r, default=_ABSENT) for r in _REFERENCE.findall(raw)]
            if _REFERENCE.fullmatch(raw) is None and None in refs:
                OmegaConf.update(cfg, key, None)
            else:
                OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as e:
            problems.append(f"{key}: cannot resolve '{raw}': {str(e).splitlines()[0]}")


def _compose(path: str | Path, overrides: Iterable[str]) -> Tuple[DictConfig, List[str]]:
    cfg = OmegaConf.structured(Recipe)
    problems: List[str] = []
    for data, source in _expand_bases(find_recipe(path)):
        _merge(cfg, data.items(), source, problems)
    _merge(cfg, _overrides(overrides, problems), COMMAND_LINE, problems)
    problems += [f"{key}: required value is missing" for key, value in _leaf_keys(OmegaConf.to_container(cfg))
                 if value == "???"]
    _resolve_interpolations(cfg, problems)
    return cfg, problems


def compose(path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Merge schema defaults, the recipe chain and overrides; types checked, interpolations
    resolved, values not yet validated. Raises RecipeError naming every bad key."""
    cfg, problems = _compose(path, overrides)
    if problems:
        raise RecipeError(problems)
    return cfg


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), world_size: Optional[int] = None, for_new_runs: bool = True
) -> Recipe:
    """Load, type-check and validate a recipe. Raises RecipeError naming every bad key.

    for_new_runs=False: the recipe of a run that already happened (a benchmark row), read
    without the checks that keep new runs off known kernel faults."""
    cfg, problems = _compose(path, overrides)
    try:  # the settings that were accepted are validated too, so that one run shows every mistake
        recipe: Recipe = OmegaConf.to_object(cfg)
        validate(recipe, world_size=world_size, for_new_runs=for_new_runs)
    except RecipeError as e:
        problems += e.problems
    except OmegaConfBaseException as e:  # a missing value or a broken interpolation, reported by _compose
        problems = problems or [_explain(e, "recipe")]
    if problems:
        raise RecipeError(problems)
    return recipe


def to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe, for logs and reproducibility."""
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))
