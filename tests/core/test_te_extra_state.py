"""Transformer Engine's FP8 delayed-scaling extra state: checked, then let through (FP8 runs resume).

TE 2.20 refuses to unpickle its own FP8 state unless NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1
(seen on an H200: an FP8-delayed run could not resume). safe_load.trusted_te_extra_state
unpickles each payload with a restricted unpickler first and sets the variable only when
every payload calls nothing but TE's recipe classes and tensors. TE is not on CPU machines:
a stand-in module of the same name provides recipe classes shaped like TE's.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import sys
import types
from typing import NamedTuple

import pytest
import torch

from megatron_ext.training.safe_load import UnsafeCheckpointError, trusted_te_extra_state

ENV = "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE"


@pytest.fixture
def te_recipe(monkeypatch):
    import megatron.core.safe_globals  # noqa: F401  (before the stand-in: Megatron probes the real TE on import)

    module = types.ModuleType("transformer_engine.common.recipe")

    class _FormatHelper(NamedTuple):
        max_fwd: float
        max_bwd: float

    class Format(enum.Enum):
        E4M3 = _FormatHelper(448, 448)
        HYBRID = _FormatHelper(448, 57344)

    @dataclasses.dataclass
    class DelayedScaling:
        fp8_format: Format = Format.HYBRID
        amax_history_len: int = 1024
        amax_compute_algo: str = "max"

    for cls in (_FormatHelper, Format, DelayedScaling):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    for name in ("transformer_engine", "transformer_engine.common"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delenv(ENV, raising=False)
    return module


def as_payload(obj) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def fp8_state(te_recipe) -> dict:
    """What TE's get_extra_state pickles for a delayed-scaling layer."""
    return {"recipe": te_recipe.DelayedScaling(), "scale_fwd": torch.ones(3), "amax_history_fwd": torch.zeros(4, 3),
            "scale_bwd": torch.ones(2), "amax_history_bwd": torch.zeros(4, 2),
            "extra_fp8_variables": {"num_gemms": 1, "fp8_checkpoint": True}}


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class NestedPayload:
    """A storage-like reduce whose torch.save'd bytes would run code under a weights_only=False load."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


def test_fp8_state_is_let_through_and_the_variable_restored(te_recipe):
    state = {"decoder.layers.0.mlp.linear_fc1._extra_state": as_payload(fp8_state(te_recipe)),
             "decoder.final_layernorm._extra_state": torch.empty(0, dtype=torch.uint8),
             "decoder.layers.0.mlp.linear_fc1.weight": torch.zeros(2)}
    with trusted_te_extra_state(state):
        assert os.environ[ENV] == "1"
        loaded = pickle.loads(state["decoder.layers.0.mlp.linear_fc1._extra_state"].numpy().tobytes())
        assert loaded["recipe"].fp8_format is te_recipe.Format.HYBRID
    assert ENV not in os.environ


def test_bf16_state_sets_nothing(te_recipe):
    with trusted_te_extra_state({"decoder.final_layernorm._extra_state": torch.empty(0, dtype=torch.uint8)}):
        assert ENV not in os.environ


@pytest.mark.parametrize("crafted", ["direct", "nested"])
def test_crafted_state_is_refused_naming_the_key_and_runs_nothing(te_recipe, tmp_path, crafted):
    import io

    marker = tmp_path / "ran"
    if crafted == "direct":
        payload = as_payload({**fp8_state(te_recipe), "recipe": RunsCode(marker)})
    else:
        buffer = io.BytesIO()
        torch.save(RunsCode(marker), buffer)
        payload = as_payload({**fp8_state(te_recipe), "scale_fwd": NestedPayload(buffer.getvalue())})
    key = "decoder.layers.3.self_attention.linear_proj._extra_state"
    with pytest.raises(UnsafeCheckpointError, match=f"model state {key}"):
        with trusted_te_extra_state({key: payload}):
            pass
    assert not marker.exists() and ENV not in os.environ
