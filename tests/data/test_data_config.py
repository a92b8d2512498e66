"""The data part of recipe validation: each problem names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ext.config import RecipeError, load_recipe, validate

STAGE1 = Path(__file__).resolve().parents[2] / "recipes" / "prolong" / "stage1_64k.yaml"


@pytest.mark.parametrize("index, field, value, message", [
    (2, "max_epochs", 0, "data.domains[2].max_epochs: must be > 0, got 0"),
    (3, "name", "textbooks", "data.domains: name 'textbooks' is used by more than one domain"),
    (0, "packing", "chunked", "data.domains[0].packing: 'chunked' is not one of long, short, sft"),
    (1, "share", 0.5, "data.domains: shares must sum to 1, got 1.200000"),
])
def test_bad_domain_settings_name_the_key(index, field, value, message):
    recipe = load_recipe(STAGE1)
    setattr(recipe.data.domains[index], field, value)
    with pytest.raises(RecipeError) as e:
        validate(recipe)
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_max_epochs_defaults_to_one_pass():
    assert {d.max_epochs for d in load_recipe(STAGE1).data.domains} == {1.0}
