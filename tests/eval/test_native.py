"""The lm-eval-free path: same documents, same scoring, plain transformers generation."""

import pytest
from eval_helpers import oracle_answer, wrong_answer

from megatron_ext.eval.native import format_prompt, generate_greedy, run_native
from megatron_ext.eval.recall_data import RECALL_TASKS, DataSettings, generate_docs

DATA = DataSettings(num_samples=6, depths=(0.0, 50.0, 100.0))


def scripted(answer):
    def generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=""):
        return [answer(p) for p in prompts]

    return generate


def test_oracle_scores_one_and_wrong_answers_zero(tiny_tokenizer):
    tasks = sorted(RECALL_TASKS)
    scores, samples = run_native(None, tiny_tokenizer, tasks, 768, DATA, batch_size=1, generate=scripted(oracle_answer))
    assert scores == {t: 1.0 for t in tasks}
    assert len(samples) == 6 * len(tasks) and {s.depth for s in samples} == {0.0, 50.0, 100.0}
    scores, _ = run_native(None, tiny_tokenizer, tasks, 768, DATA, batch_size=1, generate=scripted(wrong_answer))
    assert scores == {t: 0.0 for t in tasks}


def test_limit_and_unknown_tasks(tiny_tokenizer):
    _, samples = run_native(None, tiny_tokenizer, ["json_kv"], 768, DATA, batch_size=1, limit=2, generate=scripted(oracle_answer))
    assert [s.index for s in samples] == [0, 1]
    with pytest.raises(ValueError, match="need lm-eval"):
        run_native(None, tiny_tokenizer, ["niah_single_1"], 768, DATA, batch_size=1)


def test_batched_generation_matches_one_by_one(tiny_llama, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    docs = generate_docs("local_niah_single", tiny_tokenizer, 512, DATA)[:3]
    prompts = [format_prompt(tiny_tokenizer, d, False) for d in docs] + ["Short prompt."]
    one = generate_greedy(model, tiny_tokenizer, prompts, 8, batch_size=1)
    batched = generate_greedy(model, tiny_tokenizer, prompts, 8, batch_size=4)
    assert batched == one
    assert all(isinstance(x, str) and x for x in one)


def test_native_run_writes_everything_and_resumes(tiny_llama, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from dataclasses import replace

    from megatron_ext.eval.harness import LOCAL_TASKS
    from megatron_ext.eval.runner import EvalConfig, run_eval

    out = tmp_path / "eval"
    cfg = EvalConfig(
        checkpoint=str(tiny_llama), out_dir=str(out), lengths=[768, 512], limit=2,
        data=DataSettings(num_samples=2, depths=(0.0, 100.0)), backend="native", short_tasks=["hellaswag"],
    )
    run = run_eval(cfg)
    assert set(run.scores) == set(LOCAL_TASKS) and all(set(v) == {512, 768} for v in run.scores.values())
    reasons = {s["what"]: s["reason"] for s in run.skipped}
    assert "need lm-eval" in reasons["niah_single_1"] and "need lm-eval" in reasons["hellaswag"]
    assert "--helmet-dir" in reasons["HELMET"]
    for name in ("results.json", "samples.jsonl", "results.md", "needle_heatmap.png", "score_vs_length.png"):
        assert (out / name).is_file()
    first = (out / "samples.jsonl").read_text().splitlines()
    capsys.readouterr()

    run_eval(replace(cfg, lengths=[512, 768, 1024], resume=True))
    log = capsys.readouterr().out
    assert "length 1K:" in log and "length 512:" not in log and "length 768:" not in log
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert lines[: len(first)] == first and len(lines) == len(first) * 3 // 2


def test_cli_wires_options_through(tiny_llama, tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from eval_helpers import load_tool

    out = tmp_path / "cli"
    argv = [str(tiny_llama), "--out", str(out), "--lengths", "0.5K,768", "--limit", "2", "--samples", "3",
            "--depths", "0,100", "--tasks", "json_kv", "--backend", "native", "--short-tasks", "none", "--seed", "7"]
    assert load_tool("eval").main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["lengths"] == [512, 768] and saved["settings"]["limit"] == 2
    assert saved["settings"]["data"] == {"num_samples": 3, "depths": [0.0, 100.0], "seed": 7, "haystack": "stdlib"}
    assert list(saved["scores"]) == ["json_kv"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4
