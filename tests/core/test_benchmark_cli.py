"""Bad input to the benchmark and planner CLIs: one clear error naming the key or file, exit 2,
before anything is launched (no torchrun per rank, no traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE1 = "recipes/prolong/stage1_64k.yaml"


def run(tmp_path, *argv):
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv, says", [
    (["benchmarks/throughput.py", STAGE1, "--nproc", "0"], "--nproc must be at least 1"),
    (["benchmarks/throughput.py", STAGE1, "--nproc", "2", "train.seq_lenght=5"], "train.seq_lenght: unknown key"),
    (["benchmarks/throughput.py", STAGE1, "--nproc", "3"], "world size 3 (GPUs) is not divisible"),
    (["benchmarks/throughput.py", "nonexistent.yaml", "--nproc", "2"], "recipe file not found: nonexistent.yaml"),
    (["benchmarks/profile_iteration.py", "nonexistent.yaml"], "recipe file not found: nonexistent.yaml"),
    (["benchmarks/profile_iteration.py", STAGE1, "--nproc", "2", "--warmup", "0"], "--warmup must be at least 1"),
    (["benchmarks/profile_iteration.py", STAGE1, "--nproc", "2", "parallel.cp_comm_type=ring"], "parallel.cp_comm_type"),
])
def test_benchmarks_refuse_bad_input_before_launching(tmp_path, argv, says):
    logs = tmp_path / "logs"
    extra = ["--log-dir", str(logs)] if "throughput" in argv[0] else ["--out", str(logs)]
    out = run(tmp_path, *argv, *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr and "torchrun" not in out.stderr, out.stderr
    assert not logs.exists()   # nothing was launched


def test_calibration_names_the_file_and_line_that_is_not_a_row(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text((REPO / "reports/perf/2xh200.jsonl").read_text().splitlines()[0] + "\n\nnot json\n")
    out = run(tmp_path, "tools/plan.py", "--calibrate", str(rows))
    assert out.returncode == 2 and f"{rows}, line 3: not a row of benchmarks/throughput.py" in out.stderr, out.stderr
    rows.write_text((REPO / "reports/perf/2xh200.jsonl").read_text().splitlines()[0] + "\n")
    profile = tmp_path / "profile_row.json"
    profile.write_text("{}")
    out = run(tmp_path, "tools/plan.py", "--calibrate", str(rows), str(profile))
    assert out.returncode == 2 and f"{profile}: not a profile_row.json" in out.stderr, out.stderr
    out = run(tmp_path, "tools/plan.py", "--calibrate", str(tmp_path / "none.jsonl"))
    assert out.returncode == 2 and "none.jsonl" in out.stderr and "Traceback" not in out.stderr, out.stderr


# Stands in for torchrun: every "rank" logs three iterations to the metrics file it is given.
FAKE_TORCHRUN = """#!/bin/sh
for a in "$@"; do case $a in logging.metrics_jsonl=*) m=${a#logging.metrics_jsonl=};; esac; done
for i in 1 2 3; do
  echo '{"tokens_per_sec_per_gpu": 100.0, "tflops_per_gpu": 1.0, "mfu": 0.1, "iteration_time_s": 1.0, "max_memory_gib": 2.0, "max_reserved_gib": 2.5}' >> "$m"
done
"""


def test_each_run_logs_under_a_plain_file_name(tmp_path):
    """Labels are free text ("stock causal"); log files are named for copying and shell globs."""
    fake = tmp_path / "bin/torchrun"
    fake.parent.mkdir()
    fake.write_text(FAKE_TORCHRUN)
    fake.chmod(0o755)
    logs, rows = tmp_path / "logs", tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, "benchmarks/throughput.py", "recipes/tiny/prolong_stage1.yaml", "--stock",
                          "--warmup", "1", "--log-dir", str(logs), "--out", str(rows)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["document-masked.jsonl", "document-masked.log",
                                                       "stock_causal.jsonl", "stock_causal.log"]
    measured = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["label"] for r in measured] == ["document-masked", "stock causal"]
    assert [r["iterations_measured"] for r in measured] == [2, 2] and measured[1]["peak_reserved_gib"] == 2.5
