"""Recipe schema, loading and validation."""

from megatron_ext.config.loader import RecipeError, compose, find_recipe, load_recipe, to_yaml
from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import validate

__all__ = ["Recipe", "RecipeError", "compose", "find_recipe", "load_recipe", "to_yaml", "validate"]
