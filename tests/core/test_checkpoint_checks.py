"""The checkpoint checks one by one, in-process (the end-to-end runs: test_checkpoint_safety.py)."""

import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from megatron_ext.config.schema import Recipe
from megatron_ext.config.loader import to_yaml
from megatron_ext.processes import start_time
from megatron_ext.training.checkpoint_files import CheckpointError, DamagedCheckpointError, find_checkpoint
from megatron_ext.training.checkpoint_lock import LOCK_FILE, STALE_AFTER_S, Holder, WriterLock, lock_holder
from megatron_ext.training.checkpoint_manifest import (
    check_sizes,
    checksum_files,
    data_files,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from megatron_ext.training.recipe_changes import check_model_shapes, check_optimizer_state, check_resume


# -- which checkpoint ---------------------------------------------------------------------
def _checkpoint(directory):
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text("{}")
    return directory


def test_find_checkpoint_never_guesses(tmp_path):
    assert find_checkpoint(tmp_path / "nothing") is None
    _checkpoint(tmp_path / "iter_0000010")
    _checkpoint(tmp_path / "iter_0000020")
    with pytest.raises(CheckpointError, match="holds checkpoints but no latest_checkpointed_iteration.txt.*"
                                              "newest complete checkpoint there is iter_0000020: pass"):
        find_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("twenty")
    with pytest.raises(CheckpointError, match="expected an iteration number, found 'twenty'"):
        find_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("30")
    with pytest.raises(DamagedCheckpointError, match="iter_0000030 is not a complete checkpoint.*newest other "
                                                     "complete checkpoint there is iter_0000020"):
        find_checkpoint(tmp_path)
    assert find_checkpoint(tmp_path, step=10) == tmp_path / "iter_0000010"
    with pytest.raises(CheckpointError, match=r"ckpt_step=15: .* \(complete iterations in .*: 10, 20\)"):
        find_checkpoint(tmp_path, step=15)


# -- manifest -----------------------------------------------------------------------------
def test_manifest_detects_truncation_and_flipped_bits(tmp_path):
    (tmp_path / "a.distcp").write_bytes(os.urandom(100_000))
    (tmp_path / "metadata.json").write_text("{}")
    write_manifest(tmp_path, checksum_files(tmp_path, data_files(tmp_path)), "run", 5, "test")
    manifest = read_manifest(tmp_path)
    assert sorted(manifest["files"]) == ["a.distcp", "metadata.json"]
    assert verify_checksums(tmp_path, manifest, manifest["files"]) == 100_002
    with open(tmp_path / "a.distcp", "r+b") as f:
        f.seek(50_000)
        f.write(b"\xff" * 64)
    check_sizes(tmp_path, manifest)  # same size: only the checksum sees it
    with pytest.raises(DamagedCheckpointError, match="a.distcp: checksum mismatch"):
        verify_checksums(tmp_path, manifest, ["a.distcp"])
    os.truncate(tmp_path / "a.distcp", 10)
    with pytest.raises(DamagedCheckpointError, match="a.distcp has 10 bytes, 100000 were written"):
        check_sizes(tmp_path, manifest)


# -- recipe changes -----------------------------------------------------------------------
def test_resume_takes_layout_and_length_changes_and_refuses_model_seed_and_data():
    saved = Recipe()
    saved.data.domains = []
    current = Recipe()
    current.train.train_iters, current.parallel.tensor_model_parallel_size = 2000, 2
    note = check_resume(to_yaml(saved), current, "ckpt")
    assert note == ("resuming with recipe changes: parallel.tensor_model_parallel_size 1 -> 2, "
                    "train.train_iters 1000 -> 2000")
    current.model.vocab_size, current.train.seed, current.train.global_batch_size = 32000, 7, 32
    with pytest.raises(CheckpointError, match=r"^ckpt was trained with another recipe: model.vocab_size 128256 -> "
                                              r"32000, train.global_batch_size 64 -> 32, train.seed 1234 -> 7 "):
        check_resume(to_yaml(saved), current, "ckpt")


def test_every_recipe_key_is_classified_for_resume():
    from megatron_ext.config.schema import SyntheticDataConfig
    from megatron_ext.training.recipe_changes import RESUME_MAY_CHANGE, RESUME_REFUSES, _as_dict, _flatten, matches

    recipe = Recipe()
    recipe.data.synthetic = SyntheticDataConfig()
    for key in _flatten(_as_dict(recipe)):
        assert matches(key, RESUME_MAY_CHANGE) != matches(key, RESUME_REFUSES), (
            f"{key}: decide whether a resume may change it (megatron_ext/training/recipe_changes.py)")


def test_a_moved_data_directory_resumes_but_another_file_does_not():
    from megatron_ext.config.schema import DomainConfig

    saved, current = Recipe(), Recipe()
    saved.data.domains = [DomainConfig(name="books", paths=["/old/data/books_text_document"], share=1.0)]
    current.data.domains = [DomainConfig(name="books", paths=["/new/data/books_text_document"], share=1.0)]
    assert check_resume(to_yaml(saved), current, "ckpt") is None
    current.data.domains[0].paths = ["/new/data/arxiv_text_document"]
    with pytest.raises(CheckpointError, match="data.domains.0.paths"):
        check_resume(to_yaml(saved), current, "ckpt")


def test_a_per_rank_optimizer_state_moves_only_between_compatible_recipes():
    saved = Recipe()
    saved.train.device, saved.precision.bf16 = "cpu", False
    common = {"recipe": to_yaml(saved), "layout": {"tp": 1, "cp": 1, "dp": 1, "ddp_bucket_size": 40_000_000}}
    gpu = Recipe()  # another parameter order (TE modules) and dtype: refused, both named, for the per-rank form
    with pytest.raises(CheckpointError, match=r"precision.bf16 False -> True, train.device cpu -> cuda.*"
                                              r"pretrained_load_optim=false.*fully reshardable"):
        check_optimizer_state(common, gpu, "ck", per_rank=True, handoff=True)
    check_optimizer_state(common, gpu, "ck", per_rank=False, handoff=True)  # model-space tensors: loads
    same = Recipe()
    same.train.device, same.precision.bf16 = "cpu", False
    same.parallel.context_parallel_size = 2  # DP and CP are free
    check_optimizer_state(common, same, "ck", per_rank=True, handoff=False)
    with pytest.raises(CheckpointError, match=r"gradient bucket size \(megatron_ext/training/optim.py\) 80000000 -> "):
        check_optimizer_state({**common, "layout": {"ddp_bucket_size": 80_000_000}}, same, "ck", per_rank=True,
                              handoff=False)


def test_handoff_checks_only_shapes():
    model = Recipe().model
    check_model_shapes({"num_layers": 32, "rotary_base": 1e4, "kv_channels": None}, model, "ckpt")  # 4096/32 = 128
    with pytest.raises(CheckpointError, match=r"holds another model shape: model.num_layers 16 -> 32 \(checkpoint"):
        check_model_shapes({"num_layers": 16}, model, "ckpt")


# -- writer lock --------------------------------------------------------------------------
def _lock_of(directory, holder: Holder, age_s=0.0):
    path = directory / LOCK_FILE
    path.write_text(json.dumps(holder.__dict__))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    yield proc
    proc.kill()
    proc.wait()


def test_lock_refuses_a_live_writer_and_takes_over_a_dead_one(tmp_path, other_process):
    me = Holder.this_process()
    live = Holder(me.host, other_process.pid, start_time(other_process.pid), "77", 0)
    _lock_of(tmp_path, live)
    with pytest.raises(CheckpointError, match=f"in use by another run \\(PID {other_process.pid} on host "
                                              f"{me.host}, Slurm job 77"):
        WriterLock(tmp_path).acquire()
    assert lock_holder(tmp_path).startswith(f"PID {other_process.pid}")
    # Same PID, other start time: the PID was reused, the holder is gone.
    _lock_of(tmp_path, Holder(me.host, other_process.pid, live.started - 100, None, 0))
    logged = []
    lock = WriterLock(tmp_path, logged.append)
    lock.acquire()
    assert "that process is gone" in logged[0] and lock_holder(tmp_path) is None  # ours: nobody else's
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_of_another_host_needs_a_stale_heartbeat(tmp_path):
    elsewhere = Holder("another-node", 1234, 1.0, None, 0)
    _lock_of(tmp_path, elsewhere, age_s=60)
    with pytest.raises(CheckpointError, match="on host another-node, heartbeat 60 s ago"):
        WriterLock(tmp_path).acquire()
    _lock_of(tmp_path, elsewhere, age_s=STALE_AFTER_S + 60)
    logged = []
    WriterLock(tmp_path, logged.append).acquire()
    assert "no heartbeat for 11 min" in logged[0]


def test_lock_of_an_earlier_attempt_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _lock_of(tmp_path, Holder("another-node", 1234, 1.0, "4242", 0))
    logged = []
    WriterLock(tmp_path, logged.append).acquire()
    assert "earlier attempt of this Slurm job (restart 0)" in logged[0]


def _fake_squeue(monkeypatch, directory, script: str):
    """A ``squeue`` first on PATH that runs ``script`` (bash)."""
    directory.mkdir(exist_ok=True)
    (directory / "squeue").write_text("#!/bin/bash\n" + script + "\n")
    (directory / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("answer, taken_over", [
    ('echo RUNNING', False),
    ('echo COMPLETING', False),
    ('exit 0', True),                                                              # forgotten: no line
    ('echo PENDING', True),                                                        # requeued, not restarted
    ('echo CANCELLED', True),
    ('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1', True),
    ('echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1', False),
])
def test_lock_of_another_host_is_taken_over_when_its_slurm_job_has_ended(tmp_path, monkeypatch, answer, taken_over):
    """A job resubmitted right after a hard-killed one (node failure, OOM killer) lands on another
    node and used to wait 10 minutes of heartbeat or a manual delete; Slurm knows better."""
    _fake_squeue(monkeypatch, tmp_path / "bin", f'[ "$*" = "--noheader --jobs 555 --format %T" ] || exit 9\n{answer}')
    monkeypatch.setenv("SLURM_JOB_ID", "556")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "gpus")
    _lock_of(tmp_path, Holder("another-node", 1234, 1.0, "555", 0, "gpus"), age_s=60)
    logged = []
    if taken_over:
        WriterLock(tmp_path, logged.append).acquire()
        assert "its Slurm job 555 has ended" in logged[0]
    else:
        with pytest.raises(CheckpointError, match="in use by another run .*Slurm job 555, heartbeat 60 s ago"):
            WriterLock(tmp_path, logged.append).acquire()


@pytest.mark.parametrize("holder_cluster, my_cluster", [("other", "gpus"), (None, "gpus"), ("gpus", None)])
def test_slurm_is_asked_only_about_a_job_of_its_own_cluster(tmp_path, monkeypatch, holder_cluster, my_cluster):
    """A file system shared by two clusters: a job of the other one is unknown here, not ended."""
    _fake_squeue(monkeypatch, tmp_path / "bin", "exit 0")   # would say: ended
    monkeypatch.setenv("SLURM_JOB_ID", "556")
    if my_cluster:
        monkeypatch.setenv("SLURM_CLUSTER_NAME", my_cluster)
    else:
        monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)
    _lock_of(tmp_path, Holder("another-node", 1234, 1.0, "555", 0, holder_cluster), age_s=60)
    with pytest.raises(CheckpointError, match="in use by another run"):
        WriterLock(tmp_path).acquire()


def test_no_clear_answer_from_slurm_means_possibly_running(tmp_path, monkeypatch):
    from megatron_ext.processes import slurm_job_ended

    with monkeypatch.context() as no_squeue:
        no_squeue.setenv("PATH", str(tmp_path / "empty"))
        assert not slurm_job_ended("555")
    _fake_squeue(monkeypatch, tmp_path / "bin", "sleep 30")
    start = time.monotonic()
    assert not slurm_job_ended("555", timeout_s=0.5)
    assert time.monotonic() - start < 10


def test_a_lock_written_before_clusters_were_recorded_is_read(tmp_path):
    old = {k: v for k, v in Holder("another-node", 1234, 1.0, "555", 0).__dict__.items() if k != "slurm_cluster"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(old))
    assert lock_holder(tmp_path).startswith("PID 1234 on host another-node, Slurm job 555")


# -- restricted unpickling ----------------------------------------------------------------
class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_restricted_unpicklers_refuse_code_and_accept_checkpoint_content(tmp_path):
    import io

    import numpy as np
    import torch

    from megatron_ext.training.safe_load import UnsafeCheckpointError, load_object, unpickle_metadata

    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpointError, match="x.metadata: refused to unpickle posix.system"):
        unpickle_metadata(io.BytesIO(pickle.dumps(_RunsShell(f"touch {marker}"))), "x.metadata")
    buffer = io.BytesIO()
    torch.save([{"rng": _RunsShell(f"touch {marker}")}], buffer)
    buffer.seek(0)
    with pytest.raises(UnsafeCheckpointError, match="stored object rng_state: refused to unpickle posix.system"):
        load_object(buffer, "stored object rng_state")
    assert not marker.exists()
    # What training stores: RNG states (NumPy arrays inside), dtypes, tensors.
    buffer = io.BytesIO()
    torch.save([{"numpy": np.random.get_state(), "torch": torch.get_rng_state(), "dtype": torch.bfloat16}], buffer)
    buffer.seek(0)
    assert load_object(buffer, "rng")[0]["dtype"] is torch.bfloat16
    # Damage is damage, not an attack: said so.
    data = bytearray(buffer.getvalue())
    data[100:164] = bytes(b ^ 0xFF for b in data[100:164])
    with pytest.raises(DamagedCheckpointError, match="^rng: unreadable"):
        load_object(io.BytesIO(bytes(data)), "rng")
