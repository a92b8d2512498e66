"""The data layer imports only what is below it (config), never training, model or the entry points."""

from __future__ import annotations

import ast

from data_helpers import REPO

HIGHER = ("megatron_ext.training", "megatron_ext.model", "megatron_ext.train", "megatron_ext.preflight",
          "megatron_ext.eval", "megatron_ext.convert")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_data_never_imports_a_higher_layer():
    offenders = {f"{path.relative_to(REPO)}: {name}" for path in sorted((REPO / "megatron_ext" / "data").glob("*.py"))
                 for name in _imports(path) if name.startswith(HIGHER)}
    assert not offenders
