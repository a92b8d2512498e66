"""The comparisons of tests/gpu/check_long_sequence.py, run on the CPU on a tiny model: they pass
where document masking is exact, and they catch a model whose attention crosses documents."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = "tests/gpu/check_long_sequence.py"
ARGS = ["--recipe", "recipes/tiny/prolong_stage1.yaml", "--seq-length", "256", "train.device=cpu"]
# Plain causal attention over the whole pack: what a kernel reading past its document would do.
LEAKING_MASK = """
import runpy, torch
import megatron_ext.training.step as step
step.dense_document_mask = lambda mb: torch.ones(mb.tokens.shape[1], mb.tokens.shape[1], dtype=torch.bool).triu(1)[None, None]
runpy.run_path("tests/gpu/check_long_sequence.py", run_name="__main__")
"""


def run(python_env, tmp_path, *prefix):
    proc = subprocess.run([sys.executable, *prefix, "--out", str(tmp_path), *ARGS], env=python_env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "long_sequence_256.json").read_text())["cases"]


def test_comparisons_pass_where_document_masking_is_exact(python_env, tmp_path):
    cases = run(python_env, tmp_path, CHECK)
    for name, case in cases.items():
        assert case["rows_compared"] > 100 and case["grads_compared"] >= 9 and not case["grads_missing"], name
        assert case["hidden_max_row_rel_diff"] < 0.05 and case["grad_max_rel_l2"] < 0.05, (name, case)


def test_comparisons_catch_attention_across_documents(python_env, tmp_path):
    cases = run(python_env, tmp_path, "-c", LEAKING_MASK)
    assert cases["tail_vs_alone"]["hidden_max_row_rel_diff"] > 0.2
    assert cases["tail_vs_alone"]["grad_max_rel_l2"] > 0.2
