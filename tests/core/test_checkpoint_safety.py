"""Broken, foreign, shared, crafted and finished checkpoints, end to end on CPU: a tiny run saves,
the test damages what it saved, the relaunch must refuse in one line (exit 2) and leave every
checkpoint as it was, or do the documented right thing."""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
from test_training_cpu import TINY_CPU
from train_runner import REPO, losses, train

from megatron_ext.processes import start_time, this_host
from megatron_ext.training.checkpoint_files import TRACKER
from megatron_ext.training.checkpoint_lock import LOCK_FILE
from megatron_ext.training.checkpoint_manifest import (
    MANIFEST,
    checksum_files,
    data_files,
    read_manifest,
    verify_checksums,
    write_manifest,
)

SAVE_EVERY_2 = ["checkpoint.save_interval=2"]


class RunsShell:
    """Unpickling this runs a shell command: what a crafted checkpoint would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, python_env):
    """A run's save directory with iter_0000002 and iter_0000004 (tracker: 4)."""
    root = tmp_path_factory.mktemp("trained")
    rc, out, _ = train([*TINY_CPU, "train.train_iters=4", *SAVE_EVERY_2, f"checkpoint.save={root}/run"],
                       root / "metrics.jsonl", python_env)
    assert rc == 0, out
    # Timed and sized (docs/slurm.md: what KillWait must allow).
    saved = re.escape(f"saved checkpoint {root}/run/iter_0000004: ")
    assert re.search(saved + r"\d+\.\d\d GiB in \d+\.\d s \(checksums of", out), out
    return root / "run"


@pytest.fixture
def run_dir(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def launch(tmp_path, save, *overrides, env):
    return train([*TINY_CPU, *SAVE_EVERY_2, f"checkpoint.save={save}", *overrides],
                 tmp_path / f"metrics{len(list(tmp_path.glob('metrics*')))}.jsonl", env)


def refusal(rc, out) -> str:
    """The one error line of a run refused with exit code 2 (no traceback)."""
    assert rc == 2 and "Traceback" not in out, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-4000:]
    return errors[0]


def refused_at_start(rc, out) -> str:
    """A refusal that needs no model, before the data and the model are built (minutes on a large
    run): the recipe line, printed once the dataset is built, never comes."""
    line = refusal(rc, out)
    assert "ranks = TP 1 x CP 1 x DP 1" not in out, out[-4000:]
    return line


def snapshot(directory):
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def rewrite_manifest(checkpoint):
    """What a forger (or a hand edit) does: record the files as they are now."""
    manifest = read_manifest(checkpoint)
    write_manifest(checkpoint, checksum_files(checkpoint, data_files(checkpoint)), manifest["run_id"],
                   manifest["iteration"], manifest["written_by"])


@pytest.mark.slow  # two launches
def test_lost_tracker_is_refused_then_ckpt_step_resumes(tmp_path, run_dir, python_env):
    (run_dir / TRACKER).unlink()
    before = snapshot(run_dir)
    rc, out, metrics = launch(tmp_path, run_dir, "train.train_iters=6", env=python_env)
    line = refused_at_start(rc, out)
    assert f"{run_dir} holds checkpoints but no {TRACKER}" in line and "checkpoint.ckpt_step=4" in line
    assert metrics == [] and snapshot(run_dir) == before           # nothing trained, deleted or overwritten
    # The launch that died left its lock behind; on this host a dead holder is recognised.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": this_host(), "pid": gone.pid, "started": None,
                                                 "slurm_job": None, "slurm_restart": 0, "token": "x"}))
    rc, out, metrics = launch(tmp_path, run_dir, "train.train_iters=6", "checkpoint.ckpt_step=4", env=python_env)
    assert rc == 0, out
    assert f"taking over {run_dir / LOCK_FILE}" in out and "that process is gone" in out
    assert f"resumed from {run_dir / 'iter_0000004'}" in out and "train.train_iters 4 -> 6" in out
    assert [it for it, _ in losses(metrics)] == [5, 6]
    assert (run_dir / "iter_0000002").is_dir() and not (run_dir / LOCK_FILE).exists()


def test_flipped_bits_are_refused_naming_the_file(tmp_path, run_dir, python_env):
    shard = run_dir / "iter_0000004/__0_0.distcp"
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        data = f.read(64)
        f.seek(-64, os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in data))
    before = snapshot(run_dir)
    line = refusal(*launch(tmp_path, run_dir, "train.train_iters=6", env=python_env)[:2])
    assert f"{shard}: checksum mismatch" in line
    assert "newest other complete checkpoint there is iter_0000002: set checkpoint.ckpt_step=2" in line
    assert snapshot(run_dir) == before


def test_a_truncated_shard_is_refused_in_one_line(tmp_path, run_dir, python_env):
    # Written before manifests existed (or with its manifest lost): .metadata's byte ranges catch it.
    # (Missing shards and .metadata: tests/convert/test_damaged_checkpoints.py, same checks.)
    checkpoint = run_dir / "iter_0000004"
    (checkpoint / MANIFEST).unlink()
    os.truncate(checkpoint / "__0_0.distcp", 1000)
    line = refused_at_start(*launch(tmp_path, run_dir, "train.train_iters=6", env=python_env)[:2])
    assert f"{checkpoint}/__0_0.distcp is truncated: 1000 bytes, but " in line and "checkpoint.ckpt_step=2" in line


@pytest.mark.slow  # two launches
def test_another_model_or_seed_is_refused_and_preflight_says_so(tmp_path, run_dir, python_env):
    before = snapshot(run_dir)
    line = refused_at_start(*launch(tmp_path, run_dir, "train.train_iters=6", "model.vocab_size=1024",
                                    "train.seed=7", env=python_env)[:2])
    assert "was trained with another recipe: model.vocab_size 512 -> 1024, train.seed 1234 -> 7" in line
    line = refusal(*launch(tmp_path, run_dir, "train.preflight=true", "model.vocab_size=1024", env=python_env)[:2])
    assert "model.vocab_size 512 -> 1024" in line
    assert snapshot(run_dir) == before


def test_a_second_writer_is_refused(tmp_path, run_dir, python_env):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (run_dir / LOCK_FILE).write_text(json.dumps({
            "host": this_host(), "pid": holder.pid, "started": start_time(holder.pid), "slurm_job": "4242",
            "slurm_restart": 0, "token": "other"}))
        before = snapshot(run_dir)
        line = refused_at_start(*launch(tmp_path, run_dir, "train.train_iters=6", env=python_env)[:2])
        assert f"{run_dir} is in use by another run (PID {holder.pid} on host {this_host()}, Slurm job 4242" in line
        assert snapshot(run_dir) == before
    finally:
        holder.kill()


@pytest.mark.slow  # two launches
def test_crafted_checkpoints_run_no_code(tmp_path, run_dir, python_env):
    marker = tmp_path / "pwned"
    checkpoint = run_dir / "iter_0000004"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(RunsShell(f"touch {marker}")))
    rewrite_manifest(checkpoint)
    line = refused_at_start(*launch(tmp_path, run_dir, "train.train_iters=6", env=python_env)[:2])
    assert "/.metadata: refused to unpickle posix.system" in line and not marker.exists()
    # A stored object (here the common state) is refused too, e.g. as a pretrained checkpoint.
    from megatron_ext.convert.dist_checkpoint_io import sharded_object_key, write_dist_checkpoint

    crafted = tmp_path / "crafted"
    crafted.mkdir()
    write_dist_checkpoint(crafted, [], {sharded_object_key("common_state"): RunsShell(f"touch {marker}")})
    line = refused_at_start(*launch(tmp_path, tmp_path / "new", f"checkpoint.pretrained_checkpoint={crafted}",
                                    "train.train_iters=6", env=python_env)[:2])
    assert "stored object common_state" in line and "refused to unpickle posix.system" in line
    assert not marker.exists()


def test_rerunning_a_finished_run_says_it_is_complete(tmp_path, run_dir, python_env):
    before = snapshot(run_dir)
    rc, out, metrics = launch(tmp_path, run_dir, "train.train_iters=4", env=python_env)
    assert rc == 0 and metrics == [], out
    assert "this run is complete" in out and "relaunch with a larger train.train_iters" in out
    assert snapshot(run_dir) == before


@pytest.mark.slow  # two launches
def test_only_this_runs_checkpoints_are_pruned_or_mixed_with(tmp_path, run_dir, python_env):
    # iter_0000002 without a manifest: written before manifests, so not known to be this run's.
    (run_dir / "iter_0000002" / MANIFEST).unlink()
    rc, out, _ = launch(tmp_path, run_dir, "train.train_iters=8", "checkpoint.keep_last=1", env=python_env)
    assert rc == 0, out
    assert sorted(p.name for p in run_dir.glob("iter_*")) == ["iter_0000002", "iter_0000008"]
    # Another run's checkpoints in checkpoint.save: refused before anything is written there.
    other = shutil.copytree(run_dir, tmp_path / "other")
    manifest = json.loads((other / "iter_0000008" / MANIFEST).read_text())
    (other / "iter_0000008" / MANIFEST).write_text(json.dumps({**manifest, "run_id": "someone-else"}))
    before = snapshot(other)
    line = refused_at_start(*launch(tmp_path, other, f"checkpoint.load={run_dir}", "train.train_iters=10",
                                    env=python_env)[:2])
    assert f"checkpoint.save {other} holds checkpoints of another run (iter_0000008)" in line
    assert snapshot(other) == before


@pytest.fixture
def small_disk(tmp_path):
    """An 80 MB file system: room for one checkpoint of the tiny run (52 MB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"needs root to mount a small tmpfs: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(path):
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass


@pytest.mark.slow  # two launches
def test_a_full_disk_is_named_cleaned_up_and_the_relaunch_starts(tmp_path, trained, small_disk, python_env):
    save = small_disk / "run"
    shutil.copytree(trained / "iter_0000002", save / "iter_0000002")
    (save / TRACKER).write_text("2\n")
    overrides = ["train.train_iters=4", f"logging.tensorboard_dir={save}/tensorboard"]
    line = refusal(*launch(tmp_path, save, *overrides, env=python_env)[:2])
    assert "saving iteration 4" in line and "the disk is full" in line and "needs room for N+1" in line
    assert f"{save / 'iter_0000002'} is intact" in line and not list(save.glob(".incomplete_*"))
    verify_checksums(save / "iter_0000002", read_manifest(save / "iter_0000002"), data_files(save / "iter_0000002"))
    # A save killed mid-way filled the disk to the last byte: the relaunch removes the leftover
    # before anything else writes (TensorBoard keeps working) and resumes; its own save then fails
    # the same way.
    (save / ".incomplete_iter_0000004").mkdir()
    _fill(save / ".incomplete_iter_0000004/__0_0.distcp")
    rc, out, metrics = launch(tmp_path, save, *overrides, env=python_env)
    assert "removed what saves that did not finish" in out and "TensorBoard switched off" not in out
    assert f"resumed from {save / 'iter_0000002'}" in out and [it for it, _ in losses(metrics)] == [3, 4]
    assert rc == 2 and "the disk is full" in out and not list(save.glob(".incomplete_*"))


def test_a_disk_still_full_at_relaunch_is_refused_in_one_line(tmp_path, trained, small_disk, python_env):
    # Full of something else than an unfinished save: nothing the run may remove frees space.
    save = small_disk / "run"
    shutil.copytree(trained / "iter_0000002", save / "iter_0000002")
    (save / TRACKER).write_text("2\n")
    _fill(small_disk / "someone_elses_file")
    before = snapshot(save)
    line = refused_at_start(*launch(tmp_path, save, "train.train_iters=4", env=python_env)[:2])
    assert line == (f"error: checkpoint.save {save}: the disk is full (or the quota reached), with no unfinished "
                    f"save of this run left to remove; free space and relaunch")
    assert snapshot(save) == before


def test_a_megatron_lm_checkpoint_initializes_a_run_as_our_own_does(tmp_path, trained, python_env):
    # Its common state holds Megatron-LM's argparse namespace (and Megatron-Core enums): the
    # restricted unpickler admits what Megatron-Core registers as safe, refuses the rest.
    upstream = tmp_path / "megatron_lm"
    saved = subprocess.run([sys.executable, "tests/core/save_like_megatron_lm.py", str(trained / "iter_0000004"),
                            str(upstream), *TINY_CPU], cwd=REPO, env=python_env, capture_output=True, text=True)
    assert saved.returncode == 0, saved.stderr[-3000:]
    runs, logs = {}, {}
    for name, source in (("ours", trained), ("megatron_lm", upstream), ("fresh", None)):
        pretrained = [f"checkpoint.pretrained_checkpoint={source}"] if source else []
        rc, logs[name], metrics = launch(tmp_path, tmp_path / f"run_{name}", "train.train_iters=2", *pretrained, env=python_env)
        assert rc == 0, logs[name][-3000:]
        runs[name] = losses(metrics)
    assert f"initialized from {upstream / 'iter_0001000'} (weights only)" in logs["megatron_lm"]
    assert runs["megatron_lm"] == runs["ours"] != runs["fresh"]
    # Resuming from it instead (no train state, optimizer or recipe of ours) is refused, saying what works.
    refusals = {key: refused_at_start(*launch(tmp_path, save, *load, "train.train_iters=2", env=python_env)[:2])
                for key, save, load in (("checkpoint.load", tmp_path / "resumed", [f"checkpoint.load={upstream}"]),
                                        ("checkpoint.save", upstream, []))}
    for key, remedy in (("checkpoint.load", "instead of checkpoint.load"), ("checkpoint.save", "and another checkpoint.save")):
        assert refusals[key] == (f"error: {key}: {upstream / 'iter_0001000'} is not a training checkpoint of this project "
                                 f"(imported, or saved by Megatron-LM): to start from its weights, set "
                                 f"checkpoint.pretrained_checkpoint={upstream} {remedy}")
