"""Run ``python -m megatron_ext.train`` (or ``megatron_ext.launch`` for several ranks) as a subprocess and read
its metrics; find the processes a run left behind."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The tiny stage-1 recipe shrunk to run on a CPU in seconds per iteration.
TINY_CPU = [
    "recipes/tiny/prolong_stage1.yaml", "train.device=cpu", "precision.bf16=false", "train.seq_length=256",
    "train.global_batch_size=4", "model.vocab_size=512", "data.synthetic.vocab_size=null", "data.num_workers=0",
    "logging.tensorboard_dir=null", "logging.progress_bar=false",
]


def optimizer_format(checkpoint: Path) -> str:
    """dp_reshardable or fully_reshardable: how ``checkpoint`` holds its optimizer state."""
    from torch.distributed.checkpoint import FileSystemReader

    from megatron_ext.training.checkpoint import saved_optimizer_format

    return saved_optimizer_format(FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata)


def read_metrics(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(metrics: list) -> list:
    return [(m["iteration"], m["loss"]) for m in metrics]


def start_train(args: list, metrics: Path, env: dict, nproc: int = 1) -> subprocess.Popen:
    args = [*args, f"logging.metrics_jsonl={metrics}"]
    if nproc == 1:
        cmd = ["python", "-m", "megatron_ext.train", *args]
    else:
        cmd = ["python", "-m", "megatron_ext.launch", f"--nproc-per-node={nproc}", *args]
    return _start(cmd, env)


def _start(cmd: list, env: dict) -> subprocess.Popen:
    """In the repository, output captured, in a session of its own (finish() kills it whole)."""
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


INJECTED_FAILURE = "ValueError: injected failure in the forward step"
# One rank of ``megatron_ext.train`` whose forward step raises.
_FAILING_TRAIN = f"""import sys
from megatron_ext.training import step
def fail(*args, **kwargs):
    raise ValueError("{INJECTED_FAILURE.split(': ', 1)[1]}")
step.per_token_loss = fail
from megatron_ext.train import main
sys.exit(main(sys.argv[1:]))
"""


def start_failing_train(args: list, metrics: Path, env: dict) -> subprocess.Popen:
    """A one-rank run whose first forward step raises (how a run that fails must end)."""
    return _start([sys.executable, "-c", _FAILING_TRAIN, *args, f"logging.metrics_jsonl={metrics}"], env)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for the run; on timeout kill its whole process group (never leave ranks behind)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def train(args: list, metrics: Path, env: dict, nproc: int = 1, timeout: float = 900):
    """(return code, output, metrics) of a complete run."""
    proc = start_train(args, metrics, env, nproc)
    out = finish(proc, timeout)
    return proc.returncode, out, read_metrics(metrics)


def processes_of(session: int, marker: str = "") -> list:
    """Live processes in ``session`` or whose command line contains ``marker`` (a run's own path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state[0] != "Z" and (int(state[3]) == session or (marker and marker in cmdline)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
