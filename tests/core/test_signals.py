"""Stop signals on the CPU, through the launch paths without Slurm (tests/slurm covers srun):
whatever the moment, a SIGTERM / SIGUSR1 ends in a saved checkpoint and exit 3, or, before the
first iteration, in a clean exit 3; no rank, DataLoader worker or checkpoint helper outlives
its run or its launcher."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from megatron_ext.training import signals
from train_runner import (INJECTED_FAILURE, REPO, TINY_CPU, finish, losses, processes_of, read_metrics,
                          start_failing_train, start_train, train)

# DataLoader workers: the signals reach them too (a process-group signal), as under Slurm.
WITH_WORKERS = [*TINY_CPU, "data.num_workers=2"]


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}:\n{finish(proc)}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.2)


def importing_torch(pid: int) -> bool:
    """The process has started loading torch (seconds before the old code watched for signals)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def assert_nothing_left(session: int, marker: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while processes_of(session, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_of(session, marker)
    for line in left:  # never leave them running, even when failing
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert left == []


def tracker(ck: Path) -> int:
    return int((ck / "latest_checkpointed_iteration.txt").read_text())


def test_group_signal_after_a_save_saves_again_and_leaves_no_process(tmp_path, python_env):
    # The second save is the one that failed when the signal had killed the checkpoint writer's
    # helper process and the DataLoader workers.
    ck, metrics = tmp_path / "ck", tmp_path / "run.jsonl"
    proc = start_train([*WITH_WORKERS, "train.train_iters=1000", f"checkpoint.save={ck}",
                        "checkpoint.save_interval=2"], metrics, python_env)
    wait_until(lambda: (ck / "latest_checkpointed_iteration.txt").exists() and len(read_metrics(metrics)) >= 3,
               proc, "checkpoint at iteration 2 and iteration 3")
    os.killpg(proc.pid, signal.SIGTERM)
    out = finish(proc, 300)
    assert proc.returncode == 3, out
    saved = tracker(ck)
    assert saved >= 3 and f"received SIGTERM: checkpoint saved at iteration {saved}; exiting (code 3)" in out
    assert_nothing_left(proc.pid, str(tmp_path))
    rc, out, m = train([*TINY_CPU, f"train.train_iters={saved + 2}", f"checkpoint.save={ck}"],
                       tmp_path / "resume.jsonl", python_env)
    assert rc == 0, out
    assert [it for it, _ in losses(m)] == [saved + 1, saved + 2]


def test_a_killed_run_leaves_no_process_behind(tmp_path, python_env):
    # After a save: the checkpoint writer's helper processes, if any, exist by then.
    ck = tmp_path / "ck"
    proc = start_train([*WITH_WORKERS, "train.train_iters=1000", f"checkpoint.save={ck}",
                        "checkpoint.save_interval=1"], tmp_path / "run.jsonl", python_env)
    wait_until(lambda: (ck / "latest_checkpointed_iteration.txt").exists(), proc, "first checkpoint")
    proc.kill()
    proc.wait()
    assert_nothing_left(proc.pid, str(tmp_path))


def test_signal_while_the_run_starts_stops_it_before_training(tmp_path, python_env):
    ck, metrics = tmp_path / "ck", tmp_path / "run.jsonl"
    proc = start_train([*WITH_WORKERS, "train.train_iters=1000", f"checkpoint.save={ck}"], metrics, python_env)
    wait_until(lambda: importing_torch(proc.pid), proc, "torch import")
    os.killpg(proc.pid, signal.SIGUSR1)
    out = finish(proc, 300)
    assert proc.returncode == 3, out
    assert "received SIGUSR1: stopped before training, nothing new to save (iteration 0)" in out
    assert read_metrics(metrics) == [] and not list(ck.glob("*iter*"))  # the folder is made at start-up, empty
    assert_nothing_left(proc.pid, str(tmp_path))


@pytest.mark.slow
def test_two_ranks_group_signal_after_a_save(tmp_path, python_env):
    ck, metrics = tmp_path / "ck", tmp_path / "run.jsonl"
    proc = start_train([*WITH_WORKERS, "train.train_iters=1000", f"checkpoint.save={ck}", "checkpoint.save_interval=2"],
                       metrics, python_env, nproc=2)
    wait_until(lambda: (ck / "latest_checkpointed_iteration.txt").exists() and len(read_metrics(metrics)) >= 3,
               proc, "checkpoint at iteration 2 and iteration 3")
    os.killpg(proc.pid, signal.SIGUSR1)  # launcher, ranks and their workers
    out = finish(proc, 300)
    assert proc.returncode == 3, out  # the ranks' code, through the launcher
    saved = tracker(ck)
    assert saved >= 3 and f"received SIGUSR1: checkpoint saved at iteration {saved}" in out
    assert_nothing_left(proc.pid, str(tmp_path))


def test_launcher_passes_a_signal_on_to_ranks_that_are_starting(tmp_path, python_env):
    proc = start_train([*TINY_CPU, "train.train_iters=1000", f"checkpoint.save={tmp_path}/ck"], tmp_path / "run.jsonl",
                       python_env, nproc=2)

    def ranks_started() -> bool:
        ranks = [int(p.split(":")[0]) for p in processes_of(proc.pid, str(tmp_path)) if "megatron_ext.train" in p]
        return len(ranks) == 2 and all(importing_torch(pid) for pid in ranks)

    wait_until(ranks_started, proc, "two ranks")
    os.kill(proc.pid, signal.SIGTERM)  # the launcher only
    out = finish(proc, 300)
    assert proc.returncode == 3, out
    assert "received SIGTERM: stopped before training, nothing new to save (iteration 0)" in out
    assert_nothing_left(proc.pid, str(tmp_path))


def test_launcher_returns_a_failing_ranks_exit_code(python_env):
    out = subprocess.run(["python", "-m", "megatron_ext.launch", "--nproc-per-node=2", *TINY_CPU,
                          "train.seq_lenght=1"], cwd=REPO, env=python_env, capture_output=True, text=True)
    assert out.returncode == 2 and "train.seq_lenght: unknown key" in out.stderr, out.stderr


@pytest.mark.parametrize("launcher", [["python", "-m", "megatron_ext.launch", "--nproc-per-node=2"],
                                      ["torchrun", "--nproc-per-node=2", "-m", "megatron_ext.train"]],
                         ids=["megatron_ext.launch", "torchrun"])
def test_ranks_die_with_their_launcher(tmp_path, python_env, launcher):
    marker = str(tmp_path / "ck")
    if launcher[0] == "torchrun":
        from megatron_ext.net import free_port

        launcher = [*launcher[:2], f"--master-port={free_port()}", *launcher[2:]]
    proc = subprocess.Popen([*launcher, *TINY_CPU, "train.train_iters=1000", f"checkpoint.save={marker}"], cwd=REPO,
                            env=python_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def ranks_started() -> bool:
        ranks = [pid for pid, cmd in (p.split(":", 1) for p in processes_of(-1, marker))
                 if int(pid) != proc.pid and "megatron_ext.train" in cmd]
        return len(ranks) == 2 and all(importing_torch(int(pid)) for pid in ranks)

    try:
        wait_until(ranks_started, proc, "two ranks")
        proc.kill()
        proc.wait()
        assert_nothing_left(-1, marker)
    finally:
        for line in processes_of(proc.pid, marker):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def test_a_stop_file_written_while_it_runs_saves_and_stops(tmp_path, python_env):
    # What slurm/train.sbatch writes when the signal reached srun before its tasks existed
    # (srun drops it): the ranks read the file before every iteration.
    ck, metrics, stop = tmp_path / "ck", tmp_path / "run.jsonl", tmp_path / "stop"
    proc = start_train([*TINY_CPU, "train.train_iters=1000", f"checkpoint.save={ck}"], metrics,
                       {**python_env, signals.STOP_FILE: str(stop)})
    wait_until(lambda: len(read_metrics(metrics)) >= 2, proc, "iteration 2")
    stop.write_text("USR1\n")
    out = finish(proc, 300)
    assert proc.returncode == 3, out
    saved = tracker(ck)
    assert saved >= 2 and f"received SIGUSR1: checkpoint saved at iteration {saved}; exiting (code 3)" in out


def test_stop_file_contents(tmp_path, monkeypatch):
    stop = tmp_path / "stop"
    monkeypatch.setenv(signals.STOP_FILE, str(stop))
    assert signals._signal_in_stop_file() is None
    stop.write_text("TERM\n")
    assert signals._signal_in_stop_file() == signal.SIGTERM
    for made_by_hand in (b"", b"bogus\n", b"\xff\xfe", b"KILL\n"):
        stop.write_bytes(made_by_hand)
        assert signals._signal_in_stop_file() == signal.SIGUSR1
    monkeypatch.delenv(signals.STOP_FILE)
    assert signals._signal_in_stop_file() is None


def test_a_failing_run_with_workers_exits_and_leaves_no_process(tmp_path, python_env):
    # The traceback of a run that raised holds its micro-batch stream; at exit multiprocessing
    # sent the DataLoader workers SIGTERM, which they ignore, and waited for them forever.
    proc = start_failing_train([*WITH_WORKERS, "checkpoint.save=null", "checkpoint.save_interval=null"],
                               tmp_path / "run.jsonl", python_env)
    out = finish(proc, 120)
    assert proc.returncode == 1, out[-3000:]  # not a kill by finish()'s timeout
    assert INJECTED_FAILURE in out
    assert_nothing_left(proc.pid, str(tmp_path))
