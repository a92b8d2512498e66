"""Session fixtures: the tiny HF models and their imported Megatron checkpoints (built once)."""

import pytest
import yaml

from megatron_ext.convert.reference_models import TINY_CONFIGS, save_tiny_model


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: save_tiny_model(name, root / name) for name in TINY_CONFIGS}


@pytest.fixture(scope="session")
def imported(hf_models, tmp_path_factory):
    """name -> (checkpoint directory, recipe model section as a dict)."""
    from megatron_ext.convert import import_hf_checkpoint

    root = tmp_path_factory.mktemp("megatron")
    result = {}
    for name, hf_dir in hf_models.items():
        out = import_hf_checkpoint(hf_dir, root / name, progress=False).output
        result[name] = (out, yaml.safe_load((out / "model.yaml").read_text())["model"])
    return result
