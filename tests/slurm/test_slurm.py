"""The slurm/ scripts on a real two-node Slurm (no mocks of sbatch/srun): a stage, the whole
pipeline, the signal -> checkpoint -> requeue -> resume cycle (a rank on each node, DataLoader
workers, the signal after a save), scancel, a signal at the very start of a job, the requeue
cap, crashes, job arrays, --export=NONE and bad input. The nodes have no GPU: training stages
run for real on the CPU (train.device=cpu, the same loop and checkpoint code), or in preflight
mode (train.preflight=true: every step up to the first GPU operation, reported as "PREFLIGHT
ONLY"), which trains nothing.

All long jobs are submitted at once by the `jobs` fixture so that they run side by side."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
TINY_CPU = ["train.device=cpu", "precision.bf16=false", "train.seq_length=256", "train.global_batch_size=4",
            "model.vocab_size=512", "data.synthetic.vocab_size=null", "data.num_workers=0",
            "logging.progress_bar=false", "logging.tensorboard_dir=null"]
TINY_STAGE1 = ["recipes/tiny/prolong_stage1.yaml", *TINY_CPU]
JOB_TIMEOUT = 360

pytestmark = pytest.mark.slurm


# --- helpers ------------------------------------------------------------------------------

def write_site_env(path: Path, work: Path, **values) -> Path:
    venv = Path(sys.prefix)
    base = {"GPUS_PER_NODE": 0, "TASKS_PER_NODE": 1, "CPUS_PER_TASK": 1, "TRAIN_EXCLUSIVE": 0,
            "PYTHON_ENV": "venv" if (venv / "bin" / "activate").exists() else "none", "VENV_DIR": venv,
            "LOG_DIR": work / "logs", "MAX_REQUEUES": 3}
    path.write_text("".join(f"{k}={shlex.quote(str(v))}\n" for k, v in {**base, **values}.items()))
    return path


def run_script(cluster, script: str, *args, site: Path, extra_env=None) -> subprocess.CompletedProcess:
    env = {**cluster.env, "SITE_ENV": str(site), **(extra_env or {})}
    return subprocess.run([str(SLURM / script), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True)


def submit(cluster, *args, site: Path) -> str:
    out = run_script(cluster, "submit.sh", *args, site=site)
    assert out.returncode == 0, out.stderr
    return re.search(r": job (\d+), log ", out.stdout).group(1)


def pipeline_jobs(run_dir: Path) -> dict:
    return {line.split()[0]: line.split()[1] for line in (run_dir / "jobs.txt").read_text().splitlines()}


def log_of(cluster, job_id: str) -> str:
    path = Path(cluster.job(job_id)["StdOut"])
    return path.read_text() if path.exists() else ""


def info_dir(cluster, job_id: str, run: int = 0) -> Path:
    return Path(cluster.job(job_id)["StdOut"][:-len(".out")] + ".info") / f"run{run}"


def wait_for_text(cluster, job_id: str, text: str, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_of(cluster, job_id):
        assert cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING"), log_of(cluster, job_id)
        assert time.monotonic() < deadline, f"'{text}' not in the log of job {job_id}:\n{log_of(cluster, job_id)}"
        time.sleep(0.5)


def assert_state(info: dict, state: str, exit_code: str, log: str) -> None:
    assert (info["JobState"], info["ExitCode"]) == (state, exit_code), log


def finished_training(cluster, job: str, state: str, exit_code: str, restarts: int) -> str:
    """Wait for a training job; check how it ended and how often it was requeued; its log."""
    info = cluster.wait([job], JOB_TIMEOUT)[job]
    log = log_of(cluster, job)
    assert_state(info, state, exit_code, log)
    assert info["Restarts"] == str(restarts), log
    return log


# --- inputs of the pipelines: a tiny HF Llama, raw text, a data plan, stage recipes ----------

def build_tiny_hf(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("eval_helpers", REPO / "tests" / "eval" / "eval_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    return helpers.build_tiny_llama(out)


def write_raw_text(path: Path) -> Path:
    """Documents: the first 40 modules of Python's standard library, one per document."""
    stdlib = Path(json.__file__).parents[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for module in sorted(stdlib.glob("*.py"))[:40]:
            f.write(json.dumps({"text": module.read_text(errors="replace")}) + "\n")
    return path


def write_plan(path: Path, raw: Path, tokenizer: Path) -> Path:
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n"
                    f'python3 "$MEGATRON_EXT_REPO/tools/prepare_data.py" --input {raw} --tokenizer {tokenizer} '
                    '--output-prefix "$PROLONG_DATA/text" --workers 1 --no-progress\n')
    return path


def write_recipes(folder: Path, run_dir: Path, data: Path) -> dict:
    """Tiny ProLong stages with the imported model's shape (RUN_DIR/base/model.yaml, written by
    the import step, after the stage's recipe: so the stage's RoPE theta is set again) on the
    prepared text; two iterations each."""
    folder.mkdir(parents=True)
    recipes = {}
    for stage, tiny, theta in (("STAGE1", "prolong_stage1", 8e6), ("STAGE2", "prolong_stage2", 1.28e8),
                               ("SFT", "prolong_sft", 1.28e8)):
        path = folder / f"{tiny}.yaml"
        path.write_text(f"""\
base: [{REPO}/recipes/tiny/{tiny}.yaml, {run_dir}/base/model.yaml]
name: ci-{tiny}
model: {{rotary_base: {theta}, max_position_embeddings: 2048}}
train: {{seq_length: 256, global_batch_size: 4, train_iters: 2}}
checkpoint: {{save_interval: null}}
logging: {{progress_bar: false, tensorboard_dir: null}}
data:
  synthetic: null
  num_workers: 0
  domains: [{{name: text, share: 1.0, packing: short, max_epochs: 100, paths: ["{data}/text"]}}]
""")
        recipes[f"{stage}_RECIPE"] = path
    return recipes


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm_jobs")


@pytest.fixture(scope="session")
def jobs(cluster, work):
    """Submit every long-running job at once; the tests then wait for their own."""
    hf = build_tiny_hf(work / "hf")
    raw = write_raw_text(work / "raw" / "text.jsonl")
    plan = write_plan(work / "plan.sh", raw, hf)
    submitted = {}

    # A: the whole pipeline, training for real on the CPU.
    run_a = work / "pipeline_cpu"
    site_a = write_site_env(work / "a.env", work, HF_MODEL=hf, RUN_DIR=run_a, PROLONG_DATA=work / "data_a",
                            DATA_PLAN=plan, TRAIN_OVERRIDES="train.device=cpu precision.bf16=false",
                            EVAL_ARGS="--lengths 0.5K --limit 2 --samples 2 --depths 0,100 --tasks json_kv "
                                      "--backend native --short-tasks none --device cpu",
                            **write_recipes(work / "recipes_a", run_a, work / "data_a"))
    out = run_script(cluster, "pipeline.sh", site=site_a)
    assert out.returncode == 0, out.stderr
    submitted["pipeline_cpu"] = (run_a, out.stdout, site_a)

    # B: the pipeline in preflight mode on a fresh run directory, two ranks per stage.
    run_b = work / "pipeline_preflight"
    site_b = write_site_env(work / "b.env", work, TASKS_PER_NODE=2, HF_MODEL=hf, RUN_DIR=run_b,
                            PROLONG_DATA=work / "data_b", DATA_PLAN=plan,
                            **write_recipes(work / "recipes_b", run_b, work / "data_b"))
    out = run_script(cluster, "pipeline.sh", "--preflight", site=site_b)
    assert out.returncode == 0, out.stderr
    submitted["pipeline_preflight"] = (run_b, out.stdout)

    # C: a preflight from stage 1 whose stage 1 gets an invalid batch size: what depends on it is cancelled.
    run_c = work / "pipeline_failing"
    (run_c / "base").mkdir(parents=True)  # the import's output, which --from stage1 expects
    (run_c / "base" / "model.yaml").write_text("model: {}\n")
    site_c = write_site_env(work / "c.env", work, TASKS_PER_NODE=2, HF_MODEL=hf, RUN_DIR=run_c,
                            STAGE1_OVERRIDES="train.global_batch_size=3",
                            **write_recipes(work / "recipes_c", run_c, work / "data_b"))
    out = run_script(cluster, "pipeline.sh", "--preflight", "--from", "stage1", site=site_c)
    assert out.returncode == 0, out.stderr
    submitted["pipeline_failing"] = run_c

    # A job array with SBATCH_EXPORT=NONE and no USER: the submission's environment reaches no task.
    site_array = write_site_env(work / "array.env", work, PROLONG_CKPT=work / "array")
    with open(site_array, "a") as f:
        f.write("LOG_DIR=$PROLONG_CKPT/logs_$USER\n")
    env = {k: v for k, v in cluster.env.items() if k != "USER"}
    out = subprocess.run([str(SLURM / "submit.sh"), "--array=0-1", "--job-name=array", "train", *TINY_STAGE1,
                          "train.train_iters=2", "train.seed=%a", f"checkpoint.save={work / 'array'}/task%a"],
                         cwd=REPO, env={**env, "SITE_ENV": str(site_array), "SBATCH_EXPORT": "NONE"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    submitted["array"] = re.search(r": job (\d+), log ", out.stdout).group(1)

    # The requeue cap: every run stops after one iteration (exit 3); at most one requeue.
    site_cap = write_site_env(work / "cap.env", work, MAX_REQUEUES=1)
    submitted["cap"] = submit(cluster, "--job-name=cap", "train", *TINY_STAGE1, "train.train_iters=4",
                              "train.exit_after_iters=1", f"checkpoint.save={work / 'cap'}", site=site_cap)

    # A crash: a broken checkpoint tracker. Submitted with plain sbatch, as a user may do.
    (work / "crash").mkdir()
    (work / "crash" / "latest_checkpointed_iteration.txt").write_text("garbage\n")
    out = subprocess.run(["sbatch", "--parsable", "--job-name=crash", "--gpus-per-node=0", "--ntasks-per-node=1",
                          "--cpus-per-task=1", "--oversubscribe", f"--output={work / 'logs'}/%x-%j.out",
                          str(SLURM / "train.sbatch"),
                          *TINY_STAGE1, f"checkpoint.save={work / 'crash'}"],
                         cwd=REPO, env={**cluster.env, "SITE_ENV": str(write_site_env(work / "crash.env", work))},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    submitted["crash"] = out.stdout.strip()
    return submitted


# --- tests ----------------------------------------------------------------------------------

def test_signal_after_a_save_saves_requeues_and_resumes(cluster, work, jobs):
    # Two nodes, a rank on each, with DataLoader workers; the signal after a first save: the
    # second save is the one that failed when signals killed the checkpoint writer's helper
    # process and the workers.
    site = write_site_env(work / "signal.env", work)
    job = submit(cluster, "--job-name=signal", "--nodes=2", "train", *TINY_STAGE1, "data.num_workers=2",
                 "train.train_iters=8", "checkpoint.save_interval=2", f"checkpoint.save={work / 'signal'}", site=site)
    wait_for_text(cluster, job, "iter 3/8")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster.env, check=True)
    log = finished_training(cluster, job, "COMPLETED", "0:0", restarts=1)
    saved = re.search(r"received SIGUSR1: checkpoint saved at iteration (\d+)", log)
    assert saved, log
    iteration = int(saved.group(1))
    assert 3 <= iteration < 8
    order = ["run 1, requeues so far 0 of at most 3: 2 node(s) x 1 tasks", "received SIGUSR1", f"checkpoint saved at iteration {iteration}",
             "requeueing (requeue 1 of at most 3)", "run 2, requeues so far 1 of at most 3",
             f"resumed from {work / 'signal'}/iter_{iteration:07d}: iteration {iteration}", "iter 8/8", "finished (exit 0)"]
    positions = [log.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), log
    assert f"iter {iteration + 1}/8" in log.split("resumed from")[1]
    for run in (0, 1):  # run info of each run, next to the log
        folder = info_dir(cluster, job, run)
        assert "train_iters: 8" in (folder / "recipe.yaml").read_text()
        assert f"SLURM_JOB_ID={job}" in (folder / "env.txt").read_text()
        assert "commit" in (folder / "git.txt").read_text()


def test_scancel_saves_and_is_not_requeued(cluster, work, jobs):
    # scancel signals every process of the job (ranks and DataLoader workers) and kills what is
    # left after KillWait: the save must be done by then.
    site = write_site_env(work / "scancel.env", work)
    job = submit(cluster, "--job-name=scancel", "train", *TINY_STAGE1, "data.num_workers=2", "train.train_iters=1000",
                 "checkpoint.save_interval=2", f"checkpoint.save={work / 'scancel'}", site=site)
    wait_for_text(cluster, job, "iter 3/1000")
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    info = cluster.wait([job], JOB_TIMEOUT)[job]
    log = log_of(cluster, job)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), log
    saved = int((work / "scancel" / "latest_checkpointed_iteration.txt").read_text())
    assert saved >= 3 and f"received SIGTERM: checkpoint saved at iteration {saved}" in log, log
    assert "stopped by SIGTERM (cancelled or preempted): not requeued" in log


def test_a_signal_as_the_job_starts_requeues_it(cluster, work, jobs):
    # Sent as soon as the job has started: while the run info is written, or the ranks start.
    site = write_site_env(work / "early.env", work)
    job = submit(cluster, "--job-name=early", "train", *TINY_STAGE1, "train.train_iters=2",
                 f"checkpoint.save={work / 'early'}", site=site)
    wait_for_text(cluster, job, "run 1, requeues so far 0")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=cluster.env, check=True)
    log = finished_training(cluster, job, "COMPLETED", "0:0", restarts=1)
    first_run = log.split("run 2, requeues so far 1")[0]
    assert "received SIGUSR1" in first_run and "requeueing (requeue 1 of at most 3)" in first_run, log
    # For the ranks, should srun have had no tasks yet to pass it to (it drops it then).
    assert (info_dir(cluster, job, 0) / "stop").read_text() == "USR1\n"
    assert not (info_dir(cluster, job, 1) / "stop").exists()
    assert "iter 2/2" in log and "finished (exit 0)" in log


def test_a_stop_file_left_by_an_earlier_job_of_the_same_log_is_ignored(cluster, work):
    # A fixed --output: the next job of that name finds the earlier one's LOG.info/run0/stop.
    site = write_site_env(work / "stale.env", work)
    stale = work / "stale" / "train.info" / "run0" / "stop"
    stale.parent.mkdir(parents=True)
    stale.write_text("USR1\n")
    job = submit(cluster, f"--output={work / 'stale' / 'train.out'}", "--job-name=stale", "train", *TINY_STAGE1,
                 "train.train_iters=2", f"checkpoint.save={work / 'stale' / 'checkpoint'}", site=site)
    log = finished_training(cluster, job, "COMPLETED", "0:0", restarts=0)
    assert "iter 2/2" in log and "received" not in log and not stale.exists()


def test_job_array_tasks_train_apart_without_the_submission_environment(cluster, work, jobs):
    array = jobs["array"]
    tasks = [f"{array}_{task}" for task in (0, 1)]
    final = cluster.wait(tasks, JOB_TIMEOUT)
    for task, job in enumerate(tasks):
        log = log_of(cluster, job)
        assert_state(final[job], "COMPLETED", "0:0", log)
        assert Path(final[job]["StdOut"]).parent == work / "array" / "logs_root"  # $USER set again in the job
        assert (work / "array" / f"task{task}" / "iter_0000002" / "metadata.json").exists(), log
        info = Path(final[job]["StdOut"][:-len(".out")] + ".info") / "run0"
        assert f"seed: {task}" in (info / "recipe.yaml").read_text()
        environment = (info / "env.txt").read_text()
        assert f"site env file {work / 'array.env'}:" in environment and "  TRAIN_EXCLUSIVE=0" in environment


def test_training_jobs_take_whole_nodes_by_default(cluster, work):
    site = write_site_env(work / "exclusive.env", work, TRAIN_EXCLUSIVE=1)
    job = submit(cluster, "--begin=now+1hour", "--job-name=exclusive", "train", *TINY_STAGE1, site=site)
    info = cluster.job(job)
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    assert info["OverSubscribe"] == "NO" and info["MinMemoryNode"] == "0", info


def test_requeue_cap_then_fail(cluster, jobs):
    log = finished_training(cluster, jobs["cap"], "FAILED", "3:0", restarts=1)
    assert "requeueing (requeue 1 of at most 1)" in log
    assert "resumed from" in log and ": iteration 1," in log
    assert "the requeue limit (1) is reached: not requeued" in log
    assert log.count("iter 2/4") == 1 and "iter 3/4" not in log


def test_crash_is_not_requeued(cluster, jobs):
    log = finished_training(cluster, jobs["crash"], "FAILED", "2:0", restarts=0)
    assert "expected an iteration number, found 'garbage'" in log  # refused in one line, exit 2
    assert "training failed (exit 2): not requeued" in log


def test_pipeline_trains_every_stage_for_real(cluster, jobs):
    run_dir, printed, site = jobs["pipeline_cpu"]
    ids = pipeline_jobs(run_dir)
    assert list(ids) == ["data", "import_hf", "stage1", "stage2", "sft", "export_hf", "eval"], printed
    for step, job in ids.items():
        assert f"{step:<10} job {job}" in printed and "log " in printed
    final = cluster.wait(list(ids.values()), JOB_TIMEOUT)
    logs = {step: log_of(cluster, job) for step, job in ids.items()}
    for step, job in ids.items():
        assert_state(final[job], "COMPLETED", "0:0", f"{step}:\n{logs[step]}")
        assert (info_dir(cluster, job) / "env.txt").exists()
        assert "\r" not in logs[step], f"{step}: progress bars in the log"
    # afterok: no step started before the steps it depends on had ended
    start = {step: final[job]["StartTime"] for step, job in ids.items()}
    end = {step: final[job]["EndTime"] for step, job in ids.items()}
    for step, deps in (("stage1", ["data", "import_hf"]), ("stage2", ["stage1"]), ("sft", ["stage2"]),
                       ("export_hf", ["sft"]), ("eval", ["export_hf"])):
        assert all(start[step] >= end[dep] for dep in deps), (step, start, end)
    # the stage handoffs: weights from the import, then with stage 1's optimizer state, then weights only
    assert f"initialized from {run_dir}/base (weights only)" in logs["stage1"]
    assert f"initialized from {run_dir}/stage1/iter_0000002 (weights and optimizer state)" in logs["stage2"]
    assert f"initialized from {run_dir}/stage2/iter_0000002 (weights only)" in logs["sft"]
    recipe = (info_dir(cluster, ids["stage2"]) / "recipe.yaml").read_text()
    assert f"save: {run_dir}/stage2" in recipe and "pretrained_load_optim: true" in recipe
    config = json.loads((run_dir / "hf" / "config.json").read_text())
    assert config["rope_theta"] == pytest.approx(1.28e8)
    assert (run_dir / "eval" / "results.json").exists(), logs["eval"]
    # --from: only the steps from there on; the earlier outputs exist, so no dependency
    out = run_script(cluster, "pipeline.sh", "--from", "export_hf", "--begin=now+1hour", site=site)
    assert out.returncode == 0, out.stderr
    again = pipeline_jobs(run_dir)
    subprocess.run(["scancel", *again.values()], env=cluster.env, check=True)
    assert list(again) == ["export_hf", "eval"], out.stdout
    assert f"after {again['export_hf']}" in out.stdout.splitlines()[-2] and "after" not in out.stdout.splitlines()[1]


def test_preflight_pipeline_on_a_fresh_run_directory(cluster, jobs):
    run_dir, printed = jobs["pipeline_preflight"]
    ids = pipeline_jobs(run_dir)
    assert list(ids) == ["data", "import_hf", "stage1", "stage2", "sft"], printed
    assert "PREFLIGHT ONLY" in printed and "export_hf, eval: not submitted in preflight mode" in printed
    final = cluster.wait(list(ids.values()), JOB_TIMEOUT)
    logs = {step: log_of(cluster, job) for step, job in ids.items()}
    for step, job in ids.items():
        assert_state(final[job], "COMPLETED", "0:0", logs[step])
    assert final[ids["stage1"]]["JobName"] == f"{run_dir.name}-stage1-preflight"
    # two srun tasks met through MASTER_ADDR/PORT (a gloo all-reduce) and nothing was trained
    assert "PREFLIGHT ONLY (nothing trained, no GPU used)" in logs["stage1"]
    assert "ranks: 2 rendezvous ok (gloo all-reduce)" in logs["stage1"]
    assert f"checkpoint: initialize from {run_dir}/base" in logs["stage1"]
    assert "iter 1/" not in logs["stage1"] and not (run_dir / "stage1").exists()
    # stage 2 keeps its recipe's optimizer handoff; its input is reported as not there yet
    assert f"initialize from {run_dir}/stage1 (with optimizer state); NO CHECKPOINT THERE YET" in logs["stage2"]
    assert f"initialize from {run_dir}/stage2 (without optimizer state); NO CHECKPOINT THERE YET" in logs["sft"]


def test_a_failed_step_cancels_its_dependents(cluster, jobs):
    run_dir = jobs["pipeline_failing"]
    ids = pipeline_jobs(run_dir)
    assert list(ids) == ["stage1", "stage2", "sft"]
    final = cluster.wait(list(ids.values()), JOB_TIMEOUT)
    logs = {step: log_of(cluster, job) for step, job in ids.items()}
    # refused before any rank started, and never requeued
    assert_state(final[ids["stage1"]], "FAILED", "2:0", logs["stage1"])
    assert "train.global_batch_size: 3 is not divisible" in logs["stage1"]
    assert "not started (exit 2): not requeued" in logs["stage1"]
    # what depends on it is cancelled, not left pending, and never ran
    for step in ("stage2", "sft"):
        assert final[ids[step]]["JobState"] == "CANCELLED", final[ids[step]]
        assert logs[step] == ""


def test_bad_input_is_refused_before_submission(cluster, work):
    site = write_site_env(work / "bad.env", work, HF_MODEL=work / "hf")
    recipe = "recipes/tiny/prolong_stage1.yaml"
    cases = [
        ("submit.sh", ["train", recipe], {"SITE_ENV": "/nonexistent/site.env"}, "site env file not found: /nonexistent/site.env"),
        ("submit.sh", ["--job-name=refused", "nosuchstep"], {}, "unknown step 'nosuchstep' (steps: data import_hf train"),
        ("submit.sh", ["--job-name=refused", "train", "recipes/nope.yaml"], {}, "recipe not found: recipes/nope.yaml"),
        ("submit.sh", ["--job-name=refused", "train", recipe, "train.train_iters"], {}, "is not a key=value override"),
        ("submit.sh", ["--nodes", "2", "train", recipe], {}, "sbatch options are written --name=value here: '--nodes'"),
        ("submit.sh", ["--job-name=refused", "data", "no_plan.sh"], {}, "data: plan not found: no_plan.sh"),
        ("pipeline.sh", ["--from", "stage9"], {}, "--from: unknown step 'stage9'"),
        ("pipeline.sh", ["--from", "stage2"], {"RUN_DIR": str(work / "nothing_here")},
         "stage2 needs the output of stage1, which is not submitted (--from stage2) and not there"),
        ("pipeline.sh", [], {"SITE_ENV": str(write_site_env(work / "no_model.env", work))}, "HF_MODEL is not set"),
        ("launch.sh", ["--", "true"], {"PYTHON_ENV": "bogus"}, "PYTHON_ENV='bogus': expected venv, conda, container or none"),
        ("launch.sh", [], {"PYTHON_ENV": "none"}, "launch.sh: no command"),
        ("submit.sh", ["--array=0-1", "train", recipe], {}, "job array: give every task its own checkpoint directory"),
        ("submit.sh", ["--job-name=refused", "train", recipe], {"SITE_ENV": str(write_site_env(work / "no_logs.env", work, LOG_DIR=""))},
         "LOG_DIR is not set: where the job logs go"),
        ("pipeline.sh", [], {"SITE_ENV": str(write_site_env(work / "no_run_dir.env", work, HF_MODEL=work / "hf"))},
         "RUN_DIR is not set, nor PROLONG_CKPT"),
    ]
    for script, args, env, message in cases:
        out = run_script(cluster, script, *args, site=site, extra_env=env)
        assert out.returncode == 2 and message in out.stderr, (script, args, out.stdout, out.stderr)
    names = subprocess.run(["squeue", "-h", "-o", "%j"], env=cluster.env, capture_output=True, text=True).stdout
    assert "refused" not in names.split()


def test_a_refused_submission_cancels_and_marks_the_pipeline_so_far(cluster, work):
    # A GPU request on this GPU-less node: sbatch refuses the first training stage.
    run_dir = work / "pipeline_refused"
    site = write_site_env(work / "refused.env", work, GPUS_PER_NODE=1, HF_MODEL=work / "hf", RUN_DIR=run_dir)
    out = run_script(cluster, "pipeline.sh", "--begin=now+1hour", site=site)
    assert out.returncode == 2 and "sbatch refused the train job" in out.stderr, out.stderr
    lines = (run_dir / "jobs.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["data", "import_hf"]
    assert all(line.endswith(" cancelled") for line in lines), lines
    for line in lines:
        assert cluster.job(line.split()[1])["JobState"] == "CANCELLED"


def test_a_writer_lock_left_on_another_node_by_an_ended_job_is_taken_over(cluster, work, monkeypatch):
    """What the writer lock asks a real controller about a job on another node: running while it
    runs, ended once cancelled; the job's own environment names the cluster it records."""
    from megatron_ext.processes import slurm_job_ended
    from megatron_ext.training.checkpoint_files import CheckpointError
    from megatron_ext.training.checkpoint_lock import LOCK_FILE, Holder, WriterLock

    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    seen = work / "lock_job_cluster.txt"
    out = subprocess.run(["sbatch", "--parsable", "--output=/dev/null",
                          f"--wrap=echo $SLURM_CLUSTER_NAME > {seen}; sleep 120"],
                         env=cluster.env, capture_output=True, text=True, check=True)
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + JOB_TIMEOUT  # it may wait for a node
    while not (seen.exists() and seen.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    name = seen.read_text().strip()
    assert name == "ci" and cluster.job(job)["JobState"] == "RUNNING"
    assert not slurm_job_ended(job)
    lock_dir = work / "lock_ckpt"
    lock_dir.mkdir()
    (lock_dir / LOCK_FILE).write_text(json.dumps(Holder("another-node", 1234, 1.0, job, 0, name).__dict__))
    monkeypatch.setenv("SLURM_JOB_ID", str(int(job) + 1000))
    monkeypatch.setenv("SLURM_CLUSTER_NAME", name)
    with pytest.raises(CheckpointError, match=f"in use by another run .*Slurm job {job}"):
        WriterLock(lock_dir).acquire()
    subprocess.run(["scancel", job], env=cluster.env, check=True)
    cluster.wait([job], 60)
    assert slurm_job_ended(job)
    logged = []
    lock = WriterLock(lock_dir, logged.append)
    lock.acquire()
    lock.release()
    assert f"its Slurm job {job} has ended" in logged[0]
