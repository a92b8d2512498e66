"""Command lines answer --help and refuse bad input before torch loads, in one line per
problem with exit code 2, and keep warnings a user cannot act on out of the output."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = "recipes/tiny/prolong_stage1.yaml"

# Runs a module (-m NAME) or script like the python command would, then reports on stderr
# whether torch was imported: what a user waits for before the first line of output.
PROBE = """
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
code = 0
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def probe(target: str, *args: str, env: dict) -> tuple:
    """(exit code, stdout, stderr without the probe's line, torch imported, seconds)."""
    start = time.time()
    out = subprocess.run([sys.executable, "-c", PROBE, target, *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    seconds = time.time() - start
    *lines, last = out.stderr.splitlines()
    assert last.startswith("torch imported:"), out.stderr
    return out.returncode, out.stdout, "\n".join(lines), last.endswith("True"), seconds


CLIS = [pytest.param("megatron_ext.train", id="-m megatron_ext.train")] + [
    pytest.param(str(p.relative_to(REPO)), id=str(p.relative_to(REPO)))
    for p in sorted([*REPO.glob("tools/*.py"), *REPO.glob("tools/miniature/*.py"), *REPO.glob("benchmarks/*.py")])
    if "__main__" in p.read_text()]  # command-line tools, not their helper modules


@pytest.mark.parametrize("target", CLIS)
def test_help_answers_before_torch_loads(target, python_env):
    rc, out, err, torch_imported, seconds = probe(target, "--help", env=python_env)
    assert rc == 0 and "usage:" in out, err
    assert not torch_imported
    assert seconds < 3


def test_bad_recipe_is_refused_before_torch_loads_one_line_each(python_env):
    rc, out, err, torch_imported, _ = probe("megatron_ext.train", TINY, "train.seq_lenght=1024",
                                            "parallel.cp_comm_type=ring", "optimizer.clip_grad=nan",
                                            "data.synthetic.doc_length_max=-5", env=python_env)
    assert rc == 2 and not torch_imported
    assert err.splitlines() == [
        "error: invalid recipe:",
        "  - train.seq_lenght: unknown key. Key 'seq_lenght' not in 'TrainConfig'. Did you mean: 'seq_length'? "
        "(command line)",
        "  - parallel.cp_comm_type: 'ring' is not one of a2a, all_gather, p2p, a2a+p2p",
        "  - optimizer.clip_grad: must be a finite number, got nan",
        "  - data.synthetic.doc_length_max: must be in [1, 67108864], got -5",
    ]


def test_world_size_mistakes_are_refused_before_torch_loads(python_env):
    env = {**python_env, "RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    rc, _, err, torch_imported, _ = probe("megatron_ext.train", TINY, env=env)
    assert rc == 2 and not torch_imported
    assert "train.global_batch_size: 8 is not divisible by micro_batch_size x data-parallel size = 1 x 3" in err


def test_bad_launcher_variable_is_one_line(python_env):
    rc, _, err, _, _ = probe("megatron_ext.train", TINY, env={**python_env, "RANK": "zero", "WORLD_SIZE": "1"})
    assert rc == 2 and err == "error: environment variable RANK='zero' must be an integer (set by torchrun or srun)"


def test_unusable_output_folder_is_one_line_exit_2(tmp_path, python_env):
    (tmp_path / "file").write_text("")
    rc, _, err, torch_imported, _ = probe("megatron_ext.train", TINY, "train.device=cpu", "precision.bf16=false",
                                          f"checkpoint.save={tmp_path}/file/ck", env=python_env)
    assert rc == 2 and not torch_imported
    assert err == (f"error: checkpoint.save: cannot create {tmp_path}/file/ck: Not a directory; "
                   f"logging.tensorboard_dir: cannot create {tmp_path}/file/ck/tensorboard: Not a directory")


def test_no_gpu_is_one_line_exit_2(python_env):
    # The README's GPU command on a machine without a usable GPU (hidden here, so that the
    # test means the same on a GPU machine).
    rc, out, err, _, seconds = probe("megatron_ext.train", TINY, env={**python_env, "CUDA_VISIBLE_DEVICES": ""})
    assert rc == 2 and out == ""
    assert err == "error: train.device=cuda but no GPU is visible; check CUDA_VISIBLE_DEVICES=''"
    assert seconds < 30  # answered before Megatron-Core is imported


def test_training_output_has_no_warnings_a_user_cannot_act_on(tmp_path, python_env):
    cmd = [sys.executable, "-m", "megatron_ext.train", TINY, "train.device=cpu", "precision.bf16=false",
           "train.seq_length=64", "train.global_batch_size=1", "train.train_iters=2", "model.num_layers=1",
           "model.vocab_size=128", "data.synthetic.vocab_size=null", "data.num_workers=0",
           f"checkpoint.save={tmp_path}/ck", "checkpoint.save_interval=1", "logging.progress_bar=false"]
    out = subprocess.run(cmd, cwd=REPO, env=python_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # Megatron's Apex/TE import notes, deprecations and DDP notes are filtered
    assert "iter 2/2 | loss" in out.stdout and (tmp_path / "ck/tensorboard").is_dir()


def test_launcher_takes_overrides_after_its_options(python_env):
    """`python -m megatron_ext.launch RECIPE --nproc-per-node 1 key=value`: the override reaches
    training (which names the bad key), not an argparse error about the launcher's arguments."""
    out = subprocess.run([sys.executable, "-m", "megatron_ext.launch", TINY, "--nproc-per-node", "1",
                          "train.no_such_key=1"], cwd=REPO, capture_output=True, text=True, env=python_env, timeout=300)
    assert out.returncode == 2 and "train.no_such_key: unknown key" in out.stderr, out.stderr[-2000:]
    assert "unrecognized arguments" not in out.stderr
