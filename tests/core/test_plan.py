"""The planner: its memory arithmetic by hand on a tiny model, its fit, the measured runs it
must reproduce, and what it refuses."""

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from megatron_ext.config import RecipeError, load_recipe
from megatron_ext.config.schema import DomainConfig
from megatron_ext.planning.fit import (MEMORY_TOLERANCE, THROUGHPUT_TOLERANCE, Row, compare, fit, load_rows,
                                       measured_row)
from megatron_ext.planning.layouts import Planner, refusal, with_overrides
from megatron_ext.planning.memory import memory_terms
from megatron_ext.planning.shape import Recompute
from megatron_ext.planning.terms import GIB, Calibration
from megatron_ext.planning.throughput import time_terms
from megatron_ext.planning.workload import AssumedLengths, RankWork, workload_dataset

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "reports/data/perf_2xh200_2026-11-29/baseline.jsonl"
TINY = REPO / "recipes/tiny/prolong_stage1.yaml"
FULL_RECOMPUTE = ["parallel.recompute_granularity=full", "parallel.recompute_method=uniform",
                  "parallel.recompute_num_layers=1"]


@pytest.fixture(scope="module")
def calibration():
    return Calibration.load()


@pytest.fixture(scope="module")
def baseline_rows():
    return load_rows([BASELINE])


def test_memory_terms_of_a_tiny_model_by_hand():
    # 4 layers, hidden 256, ffn 704, 4 heads x 64 (q 256), 2 KV groups (kv 128), vocabulary
    # 128,256 untied, 4,096 tokens, one GPU, full recompute of every layer.
    terms = {t.name: t for t in memory_terms(load_recipe(TINY, FULL_RECOMPUTE), world_size=1)}
    gemm_per_layer = 256 * (256 + 2 * 128) + 256 * 256 + 3 * 256 * 704      # 737,280
    params = 4 * gemm_per_layer + 2 * 128256 * 256 + 9 * 256                 # + embedding, output, 9 norms
    assert params == 68_618_496
    assert terms["weights"].amount == 2 * params                             # bf16
    assert terms["gradients (fp32)"].amount == 4 * params
    assert terms["optimizer (fp32 master + Adam)"].amount == 12 * params     # DP x CP = 1: not sharded
    assert terms["FP8 weight copies"].amount == 0
    assert terms["checkpointed layer inputs"].amount == 4 * 4096 * 256 * 2    # one input per layer
    # One layer live while it is recomputed: 4 hidden-size tensors, q/k/v, attention output,
    # fc1 + SwiGLU outputs.
    layer = 4 * 4096 * 256 * 2 + 4096 * 512 * 2 + 4096 * 256 * 2 + 4096 * 3 * 704 * 2
    assert layer == 31_981_568
    live = terms["activations of recomputed layers"]
    assert live.amount == layer and live.constant == "activation_scale"
    assert terms["activations of stored layers"].amount == 0
    # Gathered hidden states + their gradient, 2,092-token chunk of logits (fp32 + 2 bf16
    # copies), 16 bytes per token of loss statistics, fp32 weight gradient and its bf16 copy.
    assert terms["output layer + loss"].amount == 2 * 4096 * 256 * 2 + 2092 * 128256 * 8 + 4096 * 16 + 128256 * 256 * 6
    assert terms["CP a2a buffers"].amount == 0


def test_parallelism_divides_what_it_should():
    one = {t.name: t.amount for t in memory_terms(load_recipe(TINY, FULL_RECOMPUTE), 1)}
    recipe = load_recipe(TINY, [*FULL_RECOMPUTE, "parallel.tensor_model_parallel_size=2", "parallel.context_parallel_size=2",
                                "parallel.cp_comm_type=p2p", "train.global_batch_size=8"])
    eight = {t.name: t.amount for t in memory_terms(recipe, 8)}   # TP 2 x CP 2 x DP 2
    norms = 9 * 256
    assert eight["weights"] == pytest.approx((one["weights"] - 2 * norms) / 2 + 2 * norms)
    # The distributed optimizer shards over DP x CP = 4.
    assert eight["optimizer (fp32 master + Adam)"] == pytest.approx(6 * eight["weights"] / 4)
    # A CP rank holds half the tokens and sequence parallelism splits them again over TP.
    assert eight["checkpointed layer inputs"] == one["checkpointed layer inputs"] / 4


def test_time_terms_count_recompute_and_the_slowest_rank():
    recipe = load_recipe(TINY, FULL_RECOMPUTE)
    work = RankWork(tokens=8 * 4096, pairs=1e9, micro_batches=8)
    terms = {t.name: t for t in time_terms(recipe, 1, work, peak_tflops=100)}
    layer, output = 2 * 737_280, 2 * 256 * 128256                    # forward FLOPs per token
    # 3 passes of every layer, the output GEMM 3x + once more in the loss; the recompute pass apart.
    assert terms["GEMMs"].amount == pytest.approx(8 * 4096 * 3 * 4 * layer / 100e12)
    assert terms["output layer GEMMs"].amount == pytest.approx(8 * 4096 * 4 * output / 100e12)
    assert terms["GEMMs (recompute)"].amount == pytest.approx(8 * 4096 * 4 * layer / 100e12)
    assert terms["attention"].amount == pytest.approx(1e9 * 4 * 256 * 4 / 4 * 4 / 100e12)
    assert terms["attention backward"].amount == pytest.approx(2 * terms["attention"].amount)
    assert terms["attention (recompute)"].amount == pytest.approx(1e9 * 4 * 256 * 4 / 4 * 4 / 100e12)
    assert terms["GEMMs"].constant == terms["GEMMs (recompute)"].constant == "gemm_bf16"
    # FP8 is Transformer Engine's: the layers' GEMMs, not the output layer's or the loss's.
    fp8 = {t.name: t for t in time_terms(load_recipe(TINY, [*FULL_RECOMPUTE, "precision.fp8=hybrid"]), 1, work, 100)}
    assert fp8["GEMMs"].constant == fp8["GEMMs (recompute)"].constant == "gemm_fp8"
    assert fp8["output layer GEMMs"].constant == "gemm_bf16"
    assert terms["per micro-batch overhead"].amount == 8
    assert "TP communication" not in terms and "DP gradient reduce-scatter" not in terms


def test_selective_recompute_of_some_layers_is_counted_per_layer():
    """selective_recompute_num_layers=1 of 4: one layer's MLP activations go and its MLP forward
    runs twice; the three others are stored like layers without recompute."""
    selective = ["parallel.recompute_granularity=selective", "parallel.recompute_modules=[mlp]"]
    recipes = {"none": load_recipe(TINY), "all": load_recipe(TINY, selective),
               "one": load_recipe(TINY, [*selective, "parallel.selective_recompute_num_layers=1"])}
    stored = {k: next(t.amount for t in memory_terms(r, 1) if t.name == "activations of stored layers")
              for k, r in recipes.items()}
    assert stored["one"] == pytest.approx(stored["none"] - (stored["none"] - stored["all"]) / 4)
    # A re-run is live on top of every stored layer only when the last layer recomputes.
    live = {k: next(t.amount for t in memory_terms(r, 1) if t.name == "activations of recomputed layers")
            for k, r in recipes.items()}
    assert live["one"] == live["none"] == 0 and live["all"] == pytest.approx((stored["none"] - stored["all"]) / 4)
    work = RankWork(tokens=4096, pairs=1e7, micro_batches=1)
    gemm = {k: next(t.amount for t in time_terms(r, 1, work, 100) if t.name == "GEMMs (recompute)")
            for k, r in recipes.items()}
    assert gemm["one"] - gemm["none"] == pytest.approx((gemm["all"] - gemm["none"]) / 4)
    assert Recompute.of(recipes["one"]).describe(recipes["one"]) == "selective mlp in 1 of 4 layers"


def test_the_measured_runs_are_reproduced(baseline_rows, calibration):
    results = compare(baseline_rows, calibration)
    checked = [r for r in results if r["fit"]]
    assert len(checked) == 3
    for r in checked:
        assert abs(r["memory_error"]) <= MEMORY_TOLERANCE, r
        assert abs(r["throughput_error"]) <= THROUGHPUT_TOLERANCE, r


def test_the_shipped_constants_are_refit_from_their_sources(calibration):
    """calibration.json names the runs it was fitted on, and a refit on them gives its constants:
    also from a row whose recipe new runs may no longer use (the 512K run with the fused RoPE
    kernel, which the validator now refuses)."""
    from megatron_ext.planning.profiled import load_profile

    sources = [REPO / p for p in calibration.fitted_on]
    rows = load_rows(p for p in sources if p.suffix != ".json")
    assert any(r.label == "layers2_512k_one_document" for r in rows)
    profiles = [load_profile(p) for p in sources if p.suffix == ".json"]
    refit = fit(rows, calibration, calibration.fitted_on, profiles)
    assert refit.fitted == pytest.approx(calibration.fitted, rel=1e-4)


def test_fit_recovers_known_constants(baseline_rows, calibration):
    """Rows made by a known set of constants (the measured runs' shapes and recompute variants
    of them, so that every constant is determined): the fit finds those constants again."""
    truth = Calibration(calibration.priors, fitted=calibration.fitted | dict(
        gemm_bf16=1.6, attention_bf16=2.5, tp_s_per_gb=0.009, activation_scale=0.7, stored_activation_scale=0.6))
    variants = [{}, {"parallel.recompute_granularity": None, "parallel.recompute_method": None,
                     "parallel.recompute_num_layers": None},
                {"parallel.recompute_granularity": "selective", "parallel.recompute_method": None,
                 "parallel.recompute_num_layers": None, "parallel.recompute_modules": ["mlp"]},
                # Without CP the CP row's tokens per GPU double and its exchange buffers go: a CP
                # run alone cannot tell those buffers from activations (both grow with its tokens).
                {"parallel.context_parallel_size": 1}]
    made = []
    for r in (r for r in baseline_rows if r.fit):
        for v in variants:
            recipe = with_overrides(r.recipe, v)
            tokens = recipe.train.global_batch_size * recipe.train.seq_length / r.gpus
            row = Row(r.label, recipe, r.gpus, r.works, None, None, r.peak_tflops)
            row.tokens_per_sec_per_gpu = tokens / truth.total(row.time_terms())
            row.peak_memory_gib = truth.total(row.memory_terms()) / GIB
            made.append(row)
    fitted = fit(made, calibration, ["made up"])
    for name in ("gemm_bf16", "attention_bf16", "tp_s_per_gb", "activation_scale", "stored_activation_scale"):
        assert fitted.constants[name] == pytest.approx(truth.constants[name], rel=0.08), name
    assert all(abs(r["throughput_error"]) < 0.01 for r in compare(made, fitted))


def test_a_fit_saved_and_loaded_is_the_same_fit(baseline_rows, calibration, tmp_path):
    """A refit on the bf16 run alone does not determine the FP8 constants the shipped fit took
    from the FP8 run: they are back at their priors in the values, in what is reported as resting
    on priors, and in the saved file alike."""
    bf16 = next(r for r in baseline_rows if r.fit and not r.recipe.precision.fp8)
    fp8 = next(r for r in baseline_rows if r.fit and r.recipe.precision.fp8)
    assert "gemm_fp8" in calibration.fitted
    refit = fit([bf16], calibration, ["bf16 only"])
    refit.save(tmp_path / "calibration.json")
    loaded = Calibration.load(tmp_path / "calibration.json")
    assert loaded.constants == pytest.approx(refit.constants, rel=1e-5)  # the file keeps 6 significant digits
    assert refit.constants["gemm_fp8"] == calibration.priors["gemm_fp8"]["value"]
    for terms in (fp8.time_terms(), fp8.memory_terms()):
        assert loaded.unmeasured(terms) == refit.unmeasured(terms)
    assert "gemm_fp8" in refit.unmeasured(fp8.time_terms())


def _prepared(prefix: Path, lengths) -> str:
    from megatron_ext.data.indexed import DatasetWriter

    writer = DatasetWriter(str(prefix), 128256, with_loss_mask=False)
    for n in lengths:
        writer.add(np.arange(n, dtype=np.int64))
    writer.finish({"tokenizer": {"name": "test", "vocab_size": 128256, "fingerprint": "t"}})
    writer.commit()
    return str(prefix)


def _on_data(*domains, **model):
    """The tiny recipe (2 iterations x 8 samples of 4,096 tokens) on short domains of (paths, max_epochs)."""
    recipe = load_recipe(TINY, ["train.train_iters=2"])
    return with_overrides(recipe, {"data.synthetic": None, **{f"model.{k}": v for k, v in model.items()},
                                   "data.domains": [DomainConfig(name=f"d{i}", share=1 / len(domains), packing="short",
                                                                 paths=paths, max_epochs=epochs)
                                                    for i, (paths, epochs) in enumerate(domains)]})


def test_data_that_is_here_is_planned_on_or_refused_never_assumed(tmp_path):
    web = _prepared(tmp_path / "web", [1000] * 20)  # 20,000 tokens: 4.9 samples a pass, 16 wanted
    assumed, note = workload_dataset(_on_data(([str(tmp_path / "elsewhere")], 4)))
    assert isinstance(assumed, AssumedLengths) and note.startswith("prepared data not found")
    dataset, note = workload_dataset(_on_data(([web], 4)))
    assert note is None and len(dataset) == 16 and dataset[0].doc_lengths.sum() == 4096
    with pytest.raises(RecipeError, match=r"data.domains\[0\].max_epochs: domain 'd0' must supply 16 samples"):
        workload_dataset(_on_data(([web], 2)))
    with pytest.raises(RecipeError, match=r"data.domains\[1\].paths\[0\]: domain 'd1': no dataset at .*elsewhere"):
        workload_dataset(_on_data(([web], 8), ([str(tmp_path / "elsewhere")], 8)))
    with pytest.raises(RecipeError, match=r"tokenized with test \(vocabulary 128,256\), which does not fit model.vocab_size"):
        workload_dataset(_on_data(([web], 4), vocab_size=32000))


def test_a_layout_that_cannot_fit_is_refused(calibration):
    recipe = load_recipe(REPO / "recipes/bench/llama3_8b_64k.yaml", ["train.global_batch_size=4"])
    dataset, _ = workload_dataset(recipe)
    planner = Planner(recipe, 2, 80.0, calibration, dataset, 989.0, batches=2)
    own = planner.evaluate({})
    assert not own.fits and refusal(own, 80.0).startswith("needs ") and "> 80 GiB" in refusal(own, 80.0)
    bad = planner.evaluate({"parallel.tensor_model_parallel_size": 3})
    assert bad.problem and bad.problem.startswith("parallel.tensor_model_parallel_size:")
    assert refusal(bad, 80.0) == bad.problem


def test_tp_overlap_is_planned_per_layout_not_taken_from_the_recipe(calibration):
    """A recipe composed with a hardware profile that turns TP overlap on (CP 1 only) used to get
    every CP and TP-1 layout refused for it; the overlap is now tried where it can apply."""
    recipe = load_recipe(REPO / "recipes/prolong/stage1_64k.yaml", ["parallel.tp_comm_overlap=true"])
    dataset, _ = workload_dataset(recipe)
    table = Planner(recipe, 8, 140.4, calibration, dataset, 989.0, batches=2).best_per_layout()
    assert not [e.problem for e in table if e.problem and "tp_comm_overlap" in e.problem]
    assert any(e.recipe.parallel.context_parallel_size > 1 and e.fits for e in table)
    tp2 = {e.recipe.parallel.tp_comm_overlap: e for e in table if e.describe()["TP"] == "2" and e.describe()["CP"] == "1"}
    assert tp2[True].describe()["comm"] == "TP overlap" and tp2[False].describe()["comm"] == "-"
    assert tp2[True].tokens_per_sec_per_gpu > tp2[False].tokens_per_sec_per_gpu  # the measured overlap gain


def test_assumed_lengths_follow_the_domain_shares():
    recipe = load_recipe(REPO / "recipes/prolong/stage1_64k.yaml")
    assumed = AssumedLengths(recipe)
    single = sum(len(assumed.document_lengths(i)) == 1 for i in range(1000))
    assert single == pytest.approx(600, abs=2)     # code_repos + books: 60% of samples
    assert all(assumed.document_lengths(i).sum() == 65536 for i in range(50))


def _plan(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/plan.py"), *args], cwd=REPO, capture_output=True, text=True)


def test_cli_check_refuses_before_submission_and_names_bad_keys():
    out = _plan("recipes/bench/llama3_8b_64k.yaml", "train.global_batch_size=4", "--gpus", "2",
                "--gpu-memory", "80", "--check", "--batches", "2")
    assert out.returncode == 2
    assert "this layout will not run: needs" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _plan("recipes/bench/llama3_8b_64k.yaml", "train.global_batch_size=4", "--gpus", "2",
                "--gpu-memory", "140.4", "--check", "--batches", "2")
    assert out.returncode == 0, out.stderr
    # Overrides after the options, as people type them, plan the same layout.
    after = _plan("recipes/bench/llama3_8b_64k.yaml", "--gpus", "2", "--gpu-memory", "140.4", "--check", "--batches", "2",
                  "train.global_batch_size=4")
    assert after.returncode == 0 and after.stdout == out.stdout, after.stderr
    out = _plan("recipes/bench/llama3_8b_64k.yaml", "parallel.tensor_model_paralel_size=2", "--gpus", "2", "--gpu-memory", "80")
    assert out.returncode == 2 and "parallel.tensor_model_paralel_size: unknown key" in out.stderr


def test_cli_refuses_data_it_cannot_train_on(tmp_path):
    web = _prepared(tmp_path / "web", [1000] * 20)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: {REPO / TINY}\ntrain: {{train_iters: 2}}\ndata:\n  synthetic: null\n  domains:\n"
                      f"    - {{name: web, share: 1.0, packing: short, max_epochs: 2, paths: [{web}]}}\n")
    out = _plan(str(recipe), "--gpus", "1", "--gpu-memory", "80", "--check")
    assert out.returncode == 2
    lines = out.stderr.splitlines()  # one line per problem, and no Megatron warnings around them
    assert lines[0] == "error: invalid recipe:" and len(lines) == 2
    assert lines[1].startswith("  - data.domains[0].max_epochs: domain 'web' must supply 16 samples")


@pytest.mark.slow
def test_every_sweep_case_is_a_valid_recipe(tmp_path, python_env):
    """The GPU sweep's dry run: every case's recipe validates for its GPU count (no GPU time
    lost to a typo) and gets the planner's prediction."""
    out = subprocess.run(["bash", "benchmarks/perf_sweep.sh", str(tmp_path), "all"], cwd=REPO, capture_output=True,
                         text=True, env={**python_env, "DRY_RUN": "1"}, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    listed = subprocess.run(["bash", "benchmarks/perf_sweep.sh", "--list"], cwd=REPO, capture_output=True, text=True)
    groups = {name: line.split() for name, line in (row.split(":") for row in listed.stdout.splitlines())}
    cases = groups["all"]
    assert len(cases) > 20 and all(f"{case} " in out.stdout for case in cases)
    # Each session-sized half measures its own baseline in the same call as its candidates.
    assert set(groups["stage1"]) | set(groups["stage2"]) <= set(cases)
    assert groups["stage1"][0] == "s1_baseline" and groups["stage2"][0] == "s2_baseline"


def test_sweep_queue_runs_listed_cases_in_order_and_survives_a_typo(tmp_path, python_env):
    """perf_sweep.sh --queue: a device session's queue, extended while it runs; an unknown name
    is listed as failed and the cases after it still run."""
    (tmp_path / "queue").write_text("s1_selective_tp_overlap\r\n\nnot_a_case\ns1_baseline")  # CRLF, no final newline
    out = subprocess.run(["bash", "benchmarks/perf_sweep.sh", str(tmp_path), "--queue"], cwd=REPO, capture_output=True,
                         text=True, env={**python_env, "DRY_RUN": "1"}, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "started.txt").read_text().split() == ["s1_selective_tp_overlap", "not_a_case", "s1_baseline"]
    assert (tmp_path / "failed.txt").read_text() == "not_a_case (unknown case)\n"
    predicted = [line.split()[0] for line in out.stdout.splitlines() if "predicted" in line]
    assert predicted == ["s1_selective_tp_overlap", "s1_baseline"]


def test_device_sweep_queue_extends_a_running_sweep_and_packs_results(tmp_path, python_env):
    """tools/gpu/perf_on_device.sh: `queue` starts the sweep in the background, a second `queue`
    while it runs only appends (one sweep, every case once), `status` tabulates and packs."""
    env = {**python_env, "DRY_RUN": "1", "PERF_ROOT": str(tmp_path / "perf"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    script = ["bash", str(REPO / "tools/gpu/perf_on_device.sh")]
    first = subprocess.run([*script, "queue", "s1_baseline", "s1_selective_mlp"], capture_output=True, text=True, env=env)
    second = subprocess.run([*script, "queue", "s1_tp_comm_overlap"], capture_output=True, text=True, env=env)
    assert first.returncode == second.returncode == 0 and "started" in first.stdout, first.stdout + second.stdout
    _wait_for_the_sweep(tmp_path / "perf", 3)
    assert (tmp_path / "perf/started.txt").read_text().split() == ["s1_baseline", "s1_selective_mlp", "s1_tp_comm_overlap"]
    row = {"label": "s1_baseline", "gpus": 2, "tp": 2, "cp": 1, "dp": 1, "seq_length": 65536, "document_masking": True,
           "tokens_per_sec_per_gpu": 5133.0, "tflops_per_gpu": 374.5, "mfu": 0.379, "iteration_time_s": 25.5,
           "peak_memory_gib": 81.8}
    (tmp_path / "perf/runs.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "out").mkdir()
    status = subprocess.run([*script, "status"], capture_output=True, text=True, env=env)
    assert status.returncode == 0 and "| s1_baseline | 2 | 2×1×1 | 65536 | True | 5133 |" in status.stdout, status.stdout
    with tarfile.open(tmp_path / "out/perf_out.tgz") as tgz:
        assert "perf/runs.jsonl" in tgz.getnames()


def test_a_profile_separates_gemm_from_attention_efficiency(tmp_path, calibration):
    """Stage-1 rows that differ only in recompute leave GEMM and attention efficiency
    entangled: made with known constants, a fit on them alone misses the split; one profiled
    iteration's time by category (profile_row.json, as benchmarks/profile_iteration.py writes
    it) recovers it."""
    from megatron_ext.planning.profiled import load_profile
    from megatron_ext.planning.throughput import RECOMPUTE_ATTENTION, RECOMPUTE_GEMMS

    truth = Calibration(calibration.priors, fitted=calibration.fitted | dict(gemm_bf16=1.5, attention_bf16=1.8,
                                                                            attention_bf16_backward=2.6))
    command = {"recipe": "recipes/bench/llama3_8b_64k.yaml", "gpus": 2, "warmup": 3}
    base = ["train.global_batch_size=4", "train.train_iters=7"]
    selective = ["parallel.recompute_granularity=selective", "parallel.recompute_method=null",
                 "parallel.recompute_num_layers=null", "parallel.recompute_modules=[mlp]"]
    rows = []
    for overrides in (base, [*base, *selective], [*base, "parallel.recompute_method=block", "parallel.recompute_num_layers=16"]):
        row = measured_row({**command, "overrides": overrides, "label": " ".join(overrides)})
        row.tokens_per_sec_per_gpu = 4 * 65536 / 2 / truth.total(row.time_terms())
        rows.append(row)
    split = ("gemm_bf16", "attention_bf16", "attention_bf16_backward")
    alone = fit(rows, calibration, ["made up"])
    assert max(abs(alone.constants[n] / truth.constants[n] - 1) for n in split) > 0.08

    profile_path = tmp_path / "profile_row.json"
    profile_path.write_text(json.dumps({**command, "overrides": base, "profiled_iteration": 3, "by_category_ms": {},
                                        "exposed_ms": {}}))
    terms = {t.name: truth.value(t) * 1e3 for t in load_profile(profile_path).terms}
    profile_path.write_text(json.dumps({**command, "overrides": base, "profiled_iteration": 3,
                                        "by_category_ms": {"GEMMs": terms["GEMMs"] + terms["output layer GEMMs"],
                                                           "attention forward": terms["attention"],
                                                           "attention backward": terms["attention backward"],
                                                           "recompute (forward again)": terms[RECOMPUTE_GEMMS] + terms[RECOMPUTE_ATTENTION],
                                                           "TP communication": 5 * terms["TP communication"]},
                                        "exposed_ms": {"TP communication": terms["TP communication"]}}))
    profile = load_profile(profile_path)
    assert [group for group, _, _ in profile.equations()] == ["GEMMs and elementwise", "attention forward",
                                                              "attention backward", "recompute", "TP communication (exposed)"]
    both = fit(rows, calibration, ["made up"], [profile])
    for name in (*split, "tp_s_per_gb"):
        assert both.constants[name] == pytest.approx(truth.constants[name], rel=0.03), name


def _wait_for_the_sweep(root: Path, cases: int) -> None:
    """Until `cases` cases have started and no sweep holds the queue any more."""
    started = root / "started.txt"
    for _ in range(600):
        done = started.exists() and len(started.read_text().split()) >= cases
        if done and subprocess.run(["flock", "-n", str(root / "runner.lock"), "true"]).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the sweep did not finish: {started.read_text() if started.exists() else 'nothing started'}")


def test_device_sweep_queue_runs_every_case_once_when_queued_at_once(tmp_path, python_env):
    """Queue calls at the same moment (and while the sweep ends): every case runs, and only once,
    by one sweep at a time."""
    env = {**python_env, "DRY_RUN": "1", "PERF_ROOT": str(tmp_path / "perf"), "PYTHON": sys.executable}
    cases = ["s1_baseline", "s1_selective_mlp", "s1_tp_comm_overlap", "s1_fp8_baseline", "s2_baseline", "s2_p2p"]
    script = ["bash", str(REPO / "tools/gpu/perf_on_device.sh"), "queue"]
    calls = [subprocess.Popen([*script, c], env=env, stdout=subprocess.DEVNULL) for c in cases[:4]]
    assert all(call.wait() == 0 for call in calls)
    time.sleep(1.0)  # the sweep is working (or has finished) the first four
    calls = [subprocess.Popen([*script, c], env=env, stdout=subprocess.DEVNULL) for c in cases[4:]]
    assert all(call.wait() == 0 for call in calls)
    _wait_for_the_sweep(tmp_path / "perf", len(cases))
    started = (tmp_path / "perf/started.txt").read_text().split()
    assert sorted(started) == sorted(cases), started
    recorded = [json.loads(line)["label"] for line in (tmp_path / "perf/dry_run.jsonl").read_text().splitlines()]
    assert sorted(recorded) == sorted(cases)      # each run once, none by two sweeps
