"""The recall suite inside lm-eval: RULER's offline tasks and ours, offline, per length."""

import json

import pytest
from eval_helpers import oracle_answer, wrong_answer

pytest.importorskip("lm_eval")

from megatron_ext.eval.harness import (
    DEFAULT_TASKS,
    LOCAL_TASKS,
    make_task_manager,
    mean_ignoring_placeholders,
    run_lm_eval_length,
    set_offline_environment,
    task_config,
)
from megatron_ext.eval.native import format_prompt
from megatron_ext.eval.recall_data import DataSettings, generate_docs
from megatron_ext.eval.runner import EvalConfig, run_eval
from megatron_ext.eval.short import run_short_tasks

DATA = DataSettings(num_samples=6, depths=(0.0, 50.0, 100.0))
NEEDLE_TASKS = list(LOCAL_TASKS) + ["niah_single_1", "niah_multikey_2", "niah_multikey_3"]


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """Our tasks, lm-eval's, and a tiny multiple-choice task on a local JSON file."""
    set_offline_environment(tmp_path_factory.mktemp("nltk"))
    extra = tmp_path_factory.mktemp("extra_tasks")
    rows = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1)], "label": 0} for a, b in [(1, 2), (3, 4), (5, 6)]]
    (extra / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (extra / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {extra / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    return make_task_manager([str(extra)])


class ScriptedLM:
    """An lm-eval model that answers from a script and records the prompts it was given."""

    def __new__(cls, answer):
        from lm_eval.api.model import LM

        class Scripted(LM):
            def __init__(self):
                super().__init__()
                self.prompts = []

            def generate_until(self, requests, disable_tqdm=False):
                self.prompts += [r.args[0] for r in requests]
                return [answer(r.args[0]) for r in requests]

            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

        return Scripted()


def test_metric_list_names_exactly_the_requested_length(task_manager):
    config = task_config(task_manager, "niah_single_1", 2048, {"tokenizer": "x"})
    assert [m["metric"] for m in config["metric_list"]] == ["2048"]
    assert config["metadata"]["max_seq_lengths"] == [2048] and config["metadata"]["tokenizer"] == "x"
    # RULER scores other lengths as -1 placeholders: they must not pull the mean down.
    assert mean_ignoring_placeholders([-1, 1.0, 0.0, -1]) == 0.5
    assert mean_ignoring_placeholders([-1, -1]) == -1
    ours = task_config(task_manager, "json_kv", 4096, {})
    assert ours["generation_kwargs"]["max_gen_toks"] == 64


def test_task_yamls_agree_with_recall_tasks(task_manager):
    from lm_eval.tasks._yaml_loader import load_yaml

    from megatron_ext.eval.recall_data import RECALL_TASKS

    for name, task in RECALL_TASKS.items():
        config = load_yaml(task_manager.task_index[name].yaml_path, resolve_func=False)
        assert config["task"] == name
        assert config["generation_kwargs"]["max_gen_toks"] == task.max_gen_toks
        assert config["generation_kwargs"]["do_sample"] is False  # greedy


def test_oracle_scores_one_and_wrong_scores_zero_through_lm_eval(task_manager, tiny_llama, tiny_tokenizer):
    oracle = ScriptedLM(oracle_answer)
    scores, samples = run_lm_eval_length(oracle, task_manager, NEEDLE_TASKS, 2048, str(tiny_llama), DATA, limit=3)
    assert scores == {t: 1.0 for t in NEEDLE_TASKS}
    assert {s.task for s in samples} == set(NEEDLE_TASKS) and all(s.score == 1.0 for s in samples)
    assert {s.depth for s in samples if s.task in LOCAL_TASKS} == {0.0, 50.0, 100.0}
    assert all(s.depth is None for s in samples if s.task not in LOCAL_TASKS)

    # lm-eval hands the model exactly the prompt the native backend builds for the same document.
    native_prompts = {format_prompt(tiny_tokenizer, d, False) for t in LOCAL_TASKS for d in generate_docs(t, tiny_tokenizer, 2048, DATA)[:3]}
    assert native_prompts <= set(oracle.prompts)

    scores, _ = run_lm_eval_length(ScriptedLM(wrong_answer), task_manager, NEEDLE_TASKS, 2048, str(tiny_llama), DATA, limit=3)
    assert scores == {t: 0.0 for t in NEEDLE_TASKS}


def test_short_tasks_run_when_data_is_local_and_skip_with_reason_otherwise(task_manager, tiny_llama):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_llama), batch_size=1, device="cpu")
    results, skipped = run_short_tasks(lm, task_manager, ["tiny_mc", "arc_challenge"], limit=3, seed=0)
    assert results["tiny_mc"]["metric"] == "acc,none" and 0.0 <= results["tiny_mc"]["value"] <= 1.0
    assert "arc_challenge" not in results
    assert "data not available" in skipped["arc_challenge"] and "--online" in skipped["arc_challenge"]


@pytest.mark.slow
def test_suite_end_to_end_on_tiny_llama(tiny_llama, tmp_path, capsys):
    out = tmp_path / "eval"
    cfg = EvalConfig(
        checkpoint=str(tiny_llama), out_dir=str(out), lengths=[1024, 2048], limit=1,
        data=DataSettings(num_samples=3, depths=(0.0, 50.0, 100.0)), short_tasks=[], backend="lm-eval",
    )
    run = run_eval(cfg)
    assert set(run.scores) == set(DEFAULT_TASKS)
    assert all(set(run.scores[t]) == {1024, 2048} for t in LOCAL_TASKS)
    assert all(set(run.scores[t]) == {2048} for t in DEFAULT_TASKS if t not in LOCAL_TASKS)
    assert all(0.0 <= v <= 1.0 for per in run.scores.values() for v in per.values())
    assert any(s["what"] == "ruler_vt @ 1024" for s in run.skipped)
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and saved["settings"]["decoding"] == "greedy" and saved["settings"]["backend"] == "lm-eval"
    assert set(saved["depth_grid"]) == set(LOCAL_TASKS)
    for name in ("needle_heatmap.png", "score_vs_length.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| niah_single_1 | – |" in (out / "results.md").read_text()
    assert "| task | 1K | 2K |" in capsys.readouterr().out
