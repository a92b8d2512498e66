"""parallel.tp_comm_overlap_cfg: Transformer Engine's userbuffer settings from a YAML file,
checked before launch (TE ignores a misspelt GEMM name), handed to TE, planned and fitted apart."""

import sys
import types
from pathlib import Path

import pytest

from megatron_ext.config import RecipeError, load_recipe
from megatron_ext.config.userbuffers import read_userbuffer_settings
from megatron_ext.planning.fit import measured_row
from megatron_ext.planning.layouts import Planner
from megatron_ext.planning.terms import Calibration
from megatron_ext.planning.workload import workload_dataset

REPO = Path(__file__).resolve().parents[2]
STAGE1 = REPO / "recipes/prolong/stage1_64k.yaml"   # TP 2 with sequence parallelism, CP 1
SHIPPED = sorted((REPO / "benchmarks/userbuffers").glob("*.yaml"))


def _with_settings(path, *more):
    return load_recipe(STAGE1, ["parallel.tp_comm_overlap=true", f"parallel.tp_comm_overlap_cfg={path}", *more])


def _problem(tmp_path, text: str) -> str:
    path = tmp_path / "ub.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        _with_settings(path)
    (problem,) = e.value.problems
    assert problem.startswith(f"parallel.tp_comm_overlap_cfg: {path}: ")
    return problem


def test_the_experiments_files_are_valid():
    assert len(SHIPPED) == 2
    for path in SHIPPED:
        assert _with_settings(path).parallel.tp_comm_overlap_cfg == str(path)


def test_nvidia_style_settings_are_read_as_written(tmp_path):
    path = tmp_path / "ub.yaml"
    path.write_text("qkv_wgrad:\n  method: bulk\n  num_sm: 24\n  cga_size: 2\n  set_sm_margin: 0\n"
                    "fc1_fprop: {method: ring_exchange, aggregate: 1}\n"
                    "proj_fprop: {method: pipeline, comm_priority: -5, gemm_priority: 0}\n")   # TE's own priorities
    _with_settings(path)
    assert read_userbuffer_settings(path) == {"qkv_wgrad": {"method": "bulk", "num_sm": 24, "cga_size": 2, "set_sm_margin": 0},
                                              "fc1_fprop": {"method": "ring_exchange", "aggregate": 1},
                                              "proj_fprop": {"method": "pipeline", "comm_priority": -5, "gemm_priority": 0}}
    # Atomic GEMMs with FP8 only (TE refuses them otherwise).
    path.write_text("proj_fprop: {method: ring_exchange, atomic_gemm: 1}\nqkv_fprop: {method: ring_exchange, atomic_gemm: 1}\n")
    assert _with_settings(path, "precision.fp8=hybrid").parallel.tp_comm_overlap_cfg == str(path)


@pytest.mark.parametrize("text, expected", [
    ("qkv_fprob: {method: ring_exchange}\n", "'qkv_fprob' is not a GEMM Transformer Engine overlaps"),
    ("proj_fprop: {method: pipeline, num_sms: 8}\n", "proj_fprop: unknown setting 'num_sms'"),
    ("proj_fprop: {method: ring}\n", "proj_fprop: method 'ring' cannot run here (this GEMM: pipeline, ring_exchange)"),
    # Methods TE accepts at start-up but the GEMM's layer cannot run (an error inside step 1).
    ("qkv_fprop: {method: pipeline}\n", "qkv_fprop: method 'pipeline' cannot run here (this GEMM: ring_exchange)"),
    ("fc1_fprop: {method: bulk}\n", "fc1_fprop: method 'bulk' cannot run here"),
    ("qkv_dgrad: {method: ring_exchange}\n", "qkv_dgrad: method 'ring_exchange' cannot run here (this GEMM: bulk)"),
    ("fc2_wgrad: {method: bulk}\n", "fc2_wgrad: method 'bulk' cannot run here (this GEMM: external)"),
    ("proj_fprop: {is_reduce_scatter: false}\n", "proj_fprop: is_reduce_scatter is fixed by the GEMM"),
    ("proj_fprop: {method: ring_exchange, atomic_gemm: 1}\n", "proj_fprop: atomic_gemm needs FP8 GEMMs"),
    ("proj_fprop: {method: pipeline, set_sm_margin: maybe}\n", "proj_fprop: set_sm_margin must be true/false (or 0/1)"),
    ("proj_fprop: {method: pipeline, num_sm: 0}\n", "proj_fprop: num_sm must be a whole number >= 1, got 0"),
    ("proj_fprop: {method: pipeline, num_splits: 8.5}\n", "proj_fprop: num_splits must be a whole number >= 1, got 8.5"),
    ("proj_fprop: {comm_priority: high}\n", "proj_fprop: comm_priority must be a whole number, got 'high'"),
    ("proj_fprop: pipeline\n", "proj_fprop: expected a mapping of settings"),
    ("- proj_fprop\n", "expected a mapping of GEMM names"),
    ("", "expected a mapping of GEMM names"),
    ("proj_fprop: {method: [\n", "not valid YAML"),
])
def test_bad_settings_are_refused_with_the_key_and_file(tmp_path, text, expected):
    assert expected in _problem(tmp_path, text)


def test_every_problem_of_a_file_is_listed(tmp_path):
    problem = _problem(tmp_path, "qkv_fprob: {}\nfc2_fprop: {num_sms: 1, method: bulkk}\n")
    assert "'qkv_fprob'" in problem and "'num_sms'" in problem and "'bulkk'" in problem


def test_a_missing_file_or_one_without_the_overlap_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"parallel.tp_comm_overlap_cfg: .*nothing.yaml: cannot read it"):
        _with_settings(tmp_path / "nothing.yaml")
    with pytest.raises(RecipeError, match="parallel.tp_comm_overlap_cfg: only used with parallel.tp_comm_overlap=true"):
        load_recipe(STAGE1, [f"parallel.tp_comm_overlap_cfg={SHIPPED[0]}"])


def test_the_settings_reach_transformer_engine(monkeypatch):
    """TE cannot run here: a stand-in records what initialize_ub is given."""
    from megatron_ext.model.llama import initialize_tp_comm_overlap

    calls = []
    base = types.SimpleNamespace(initialize_ub=lambda **kw: calls.append(kw),
                                 UserBufferQuantizationMode=types.SimpleNamespace(FP8="fp8", NONE="none"))
    module = types.SimpleNamespace(base=base)
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    pytorch = types.ModuleType("transformer_engine.pytorch")
    pytorch.module = module
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", pytorch)
    initialize_tp_comm_overlap(_with_settings(SHIPPED[0]))
    initialize_tp_comm_overlap(load_recipe(STAGE1, ["parallel.tp_comm_overlap=true"]))
    assert calls[0]["ub_cfgs"] == read_userbuffer_settings(SHIPPED[0]) and calls[0]["ub_cfgs"]
    assert calls[1]["ub_cfgs"] is None           # TE's defaults
    assert calls[0]["shape"] == [65536, 4096] and calls[0]["tp_size"] == 2


def test_the_planner_keeps_the_settings_where_the_overlap_applies_and_does_not_fit_them():
    recipe = _with_settings(SHIPPED[0])
    dataset, _ = workload_dataset(recipe)
    table = Planner(recipe, 8, 140.4, Calibration.load(), dataset, 989.0, batches=2).best_per_layout()
    assert not [e.problem for e in table if e.problem and "tp_comm_overlap" in e.problem]
    settings = {(e.recipe.parallel.tp_comm_overlap, e.recipe.parallel.tp_comm_overlap_cfg) for e in table}
    assert (True, str(SHIPPED[0])) in settings and (False, None) in settings
    assert all(cfg is None for overlap, cfg in settings if not overlap)
    # A measured run with its own settings is not what the TP-overlap constant describes.
    command = {"recipe": "recipes/bench/llama3_8b_64k.yaml", "gpus": 2, "warmup": 3, "label": "x",
               "overrides": ["train.global_batch_size=4", "train.train_iters=7", "parallel.tp_comm_overlap=true"]}
    assert measured_row(command).fit
    row = measured_row({**command, "overrides": [*command["overrides"], f"parallel.tp_comm_overlap_cfg={SHIPPED[0]}"]})
    assert not row.fit and "userbuffer settings" in row.note
