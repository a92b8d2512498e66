"""One evaluation run: check inputs, run the recall suite length by length (saving after
each), then short-context tasks and HELMET, then tables and plots."""

from __future__ import annotations

import gc
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ext.eval import report
from megatron_ext.eval.checkpoint import CheckpointError, check_lengths, inspect_checkpoint
from megatron_ext.eval.harness import DEFAULT_TASKS, LENGTH_MARGIN, LOCAL_TASKS, RULER_NEEDS_NETWORK
from megatron_ext.eval.recall_data import DataSettings
from megatron_ext.eval.results import EvalRun
from megatron_ext.eval.short import SHORT_TASKS

# RULER's variable-tracking generator loops forever when its 500-token in-context example
# leaves no room (seen at 1K); RULER itself starts at 4K.
RULER_MIN_LENGTH = 2048
MIN_LENGTH = 512


@dataclass
class EvalConfig:
    checkpoint: str
    out_dir: str
    lengths: list[int]
    tasks: list[str] | None = None  # None: every task the backend can run offline
    limit: int | None = None  # documents per task and length
    data: DataSettings = field(default_factory=DataSettings)
    backend: str = "auto"  # "lm-eval", "native", or "auto" (lm-eval when installed)
    batch_size: int | None = None  # None: from free GPU memory per length
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    allow_beyond_max_position: bool = False
    tokenizer: str | None = None
    apply_chat_template: bool = False
    short_tasks: list[str] = field(default_factory=lambda: list(SHORT_TASKS))
    short_limit: int | None = None
    include_paths: list[str] = field(default_factory=list)  # extra lm-eval task directories
    helmet_dir: str | None = None
    helmet_data: str = "local"  # "local" (our data, offline) or "official" (HELMET's downloads)
    helmet_samples: int = 100
    resume: bool = False
    overwrite: bool = False
    loss_data: list[str] = field(default_factory=list)  # held-out .jsonl/.txt files: mean next-token loss
    loss_max_tokens: int = 2048  # each document is cut to this many tokens
    loss_limit: int | None = None  # documents per file


def log(message: str) -> None:
    print(f"[eval] {message}", flush=True)


def resolve_backend(requested: str) -> str:
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    if requested == "auto":
        return "lm-eval" if has_lm_eval else "native"
    if requested == "lm-eval" and not has_lm_eval:
        raise CheckpointError("--backend lm-eval: lm-eval is not installed (pip install 'lm-eval[ruler]==0.4.13'), or use --backend native")
    if requested not in ("lm-eval", "native"):
        raise CheckpointError(f"unknown backend {requested!r} (lm-eval, native or auto)")
    return requested


def plan_tasks(cfg: EvalConfig, backend: str, run: EvalRun) -> list[str]:
    if cfg.tasks is None:
        tasks = list(DEFAULT_TASKS if backend == "lm-eval" else LOCAL_TASKS)
        if backend == "native":
            for t in DEFAULT_TASKS:
                if t not in LOCAL_TASKS:
                    run.skip(t, "native backend: RULER tasks need lm-eval (pip install 'lm-eval[ruler]')")
        for t in RULER_NEEDS_NETWORK:
            run.skip(t, "RULER essay/QA task: downloads its haystack or questions; local_niah_* replace it offline")
        return tasks
    if backend == "native":
        foreign = [t for t in cfg.tasks if t not in LOCAL_TASKS]
        if foreign:
            raise CheckpointError(f"--backend native runs only {list(LOCAL_TASKS)}; {foreign} need lm-eval")
    return list(cfg.tasks)


def prepare_output(cfg: EvalConfig, out: Path, model_info: dict, settings: dict) -> EvalRun:
    existing = out / "results.json"
    if existing.exists() and cfg.resume:
        run = EvalRun.load(existing)
        if run.model.get("path") != model_info["path"] or run.settings.get("data") != settings["data"]:
            raise CheckpointError(f"--resume: {existing} was made for another model or data settings; use a new --out")
        run.settings, run.complete, run.skipped = settings, False, []
        return run
    if existing.exists() and not cfg.overwrite:
        raise CheckpointError(f"{existing} already exists; pass --resume to continue it, --overwrite to replace it, or choose another --out")
    return EvalRun(model=model_info, settings=settings)


def run_eval(cfg: EvalConfig) -> EvalRun:
    info = inspect_checkpoint(cfg.checkpoint, cfg.tokenizer)
    lengths = sorted(set(cfg.lengths))
    if not lengths and not cfg.loss_data:
        raise CheckpointError("nothing to evaluate: no --lengths and no --loss-data")
    if lengths:
        check_lengths(lengths, info.max_position_embeddings, cfg.allow_beyond_max_position)
    if lengths and lengths[0] < MIN_LENGTH:
        raise CheckpointError(f"length {lengths[0]} is too short: below {MIN_LENGTH} tokens the prompts leave no room for a haystack")
    backend = resolve_backend(cfg.backend)
    if cfg.helmet_data not in ("local", "official"):
        raise CheckpointError(f"--helmet-data must be 'local' or 'official', not {cfg.helmet_data!r}")

    import torch

    from megatron_ext.eval.runtime import choose_batch_size, choose_runtime, load_model, load_tokenizer

    runtime = choose_runtime(cfg.device, cfg.dtype, cfg.attn_implementation)
    settings = {
        "backend": backend,
        "lengths": lengths,
        "limit": cfg.limit,
        "data": {**asdict(cfg.data), "depths": list(cfg.data.depths)},
        "device": runtime.device,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "attn_implementation": runtime.attn_implementation,
        "apply_chat_template": cfg.apply_chat_template,
        "decoding": "greedy",
    }
    out = Path(cfg.out_dir)
    run = prepare_output(cfg, out, info.as_dict(), settings)
    tasks = plan_tasks(cfg, backend, run) if lengths else []
    loss_docs = read_loss_data(cfg)  # before loading the model: a bad file should fail fast

    task_manager = None
    if backend == "lm-eval":  # before loading the model: a typo in --tasks should fail fast
        from megatron_ext.eval.harness import make_task_manager

        task_manager = make_task_manager(cfg.include_paths)
        unknown = [t for t in tasks + cfg.short_tasks if t not in task_manager.task_index]
        if unknown:
            raise CheckpointError(f"lm-eval knows no tasks {unknown} (add a task directory with --include-path?)")

    log(f"loading {info.path} on {runtime.device} ({settings['dtype']}, attention {runtime.attn_implementation})")
    model = load_model(info, runtime)
    tokenizer = load_tokenizer(info)

    for name, docs in loss_docs.items():
        if name not in run.text_loss:
            from megatron_ext.eval.text_loss import text_loss

            started = time.time()
            run.text_loss[name] = text_loss(model, tokenizer, docs, cfg.loss_max_tokens)
            run.save(out)
            log(f"held-out loss {name}: {run.text_loss[name]['loss']:.4f} over {run.text_loss[name]['tokens']} tokens "
                f"({time.time() - started:.0f} s)")

    lm = None
    if backend == "lm-eval":
        from lm_eval.models.huggingface import HFLM

        longest = max(lengths, default=4096)  # loss-only runs may still run short tasks
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=longest + max(LENGTH_MARGIN, longest // 32))

    for length in lengths:
        todo = [t for t in tasks if length not in run.scores.get(t, {})]
        if backend == "lm-eval" and length < RULER_MIN_LENGTH:
            for t in [t for t in todo if t not in LOCAL_TASKS]:
                run.skip(f"{t} @ {length}", f"RULER generators need at least {RULER_MIN_LENGTH} tokens")
            todo = [t for t in todo if t in LOCAL_TASKS]
        if not todo:
            continue
        batch = cfg.batch_size or choose_batch_size(model.config, length, runtime)
        log(f"length {report.format_length(length)}: {len(todo)} tasks, batch size {batch}")
        started = time.time()
        if backend == "lm-eval":
            from megatron_ext.eval.harness import run_lm_eval_length

            lm.batch_size_per_gpu = batch
            scores, samples = run_lm_eval_length(lm, task_manager, todo, length, str(info.tokenizer_path), cfg.data, cfg.limit, cfg.apply_chat_template)
        else:
            from megatron_ext.eval.native import run_native

            scores, samples = run_native(model, tokenizer, todo, length, cfg.data, batch, cfg.limit, apply_chat_template=cfg.apply_chat_template)
        run.samples = [s for s in run.samples if not (s.length == length and s.task in scores)] + samples
        for task, score in scores.items():
            run.scores.setdefault(task, {})[length] = score
        run.save(out)  # a crash at a longer length keeps this one
        log(f"length {report.format_length(length)} done in {time.time() - started:.0f} s: " + ", ".join(f"{t} {100 * s:.1f}" for t, s in scores.items()))

    run.short, short_skipped = {}, {}
    if cfg.short_tasks and backend == "native":
        short_skipped = {t: "native backend: short-context tasks need lm-eval" for t in cfg.short_tasks}
    elif cfg.short_tasks:
        from megatron_ext.eval.short import run_short_tasks

        log(f"short-context tasks: {', '.join(cfg.short_tasks)}")
        lm.batch_size_per_gpu = cfg.batch_size or choose_batch_size(model.config, 4096, runtime)
        run.short, short_skipped = run_short_tasks(lm, task_manager, cfg.short_tasks, cfg.short_limit, cfg.data.seed)
    for t, reason in short_skipped.items():
        run.skip(t, reason)

    del lm, model  # HELMET loads its own copy of the model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if cfg.helmet_dir:
        run_helmet_adapter(cfg, run, out, str(info.path), tokenizer, lengths, [t for t in tasks if t in LOCAL_TASKS])
    else:
        run.skip("HELMET", "no --helmet-dir given (HELMET is a git checkout, not a PyPI package)")

    run.complete = True
    finish(run, out)
    return run


def read_loss_data(cfg: EvalConfig) -> dict[str, list[str]]:
    """Held-out documents per file, keyed by the file's stem (refusing two files of one name)."""
    from megatron_ext.eval.text_loss import read_documents

    if cfg.loss_limit is not None and cfg.loss_limit < 1:
        raise CheckpointError(f"--loss-limit {cfg.loss_limit}: must be at least 1 document")
    docs: dict[str, list[str]] = {}
    for path in cfg.loss_data:
        name = Path(path).stem
        if name in docs:
            raise CheckpointError(f"--loss-data: two files are named {name!r}; the results are keyed by file name")
        try:
            docs[name] = read_documents(path)[:cfg.loss_limit]
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return docs


def run_helmet_adapter(cfg: EvalConfig, run: EvalRun, out: Path, model_path: str, tokenizer, lengths: list[int], local_tasks: list[str]) -> None:
    from megatron_ext.eval import helmet

    helmet_dir, helmet_out = Path(cfg.helmet_dir), out / "helmet"
    helmet_out.mkdir(parents=True, exist_ok=True)
    if cfg.helmet_data == "official":
        config, skipped = helmet.official_recall_config(helmet_dir, model_path, lengths, cfg.helmet_samples, cfg.apply_chat_template)
    else:
        config = helmet.write_local_data(helmet_out, tokenizer, model_path, local_tasks, lengths, cfg.data, cfg.helmet_samples, cfg.apply_chat_template)
        skipped = {}
    for what, reason in skipped.items():
        run.skip(what, reason)
    if not config.datasets:
        run.skip("HELMET", "nothing to run (see the skipped entries above)")
        return
    config_path = helmet_out / "config.yaml"
    config_path.write_text(config.as_yaml())
    log(f"HELMET: {len(config.datasets)} runs, config {config_path}")
    try:
        helmet.run_helmet(helmet_dir, config_path, model_path, helmet_out / "output")
    except (FileNotFoundError, RuntimeError) as e:
        run.skip("HELMET", str(e))
        return
    run.helmet, missing = helmet.collect_scores(helmet_out / "output", config)
    for what, reason in missing.items():
        run.skip(what, reason)


def write_results(run: EvalRun, out: Path) -> list[Path]:
    """results.json, samples.jsonl, results.md and the plots of ``run`` in ``out``."""
    from megatron_ext.eval import plots

    written = [run.save(out)]
    title = f"Evaluation of {Path(str(run.model['path'])).name}"
    (out / "results.md").write_text(report.run_report(run, title))
    written.append(out / "results.md")
    for plot in (plots.plot_needle_heatmap(run, out / "needle_heatmap.png"),
                 plots.plot_score_vs_length(run, out / "score_vs_length.png")):
        if plot:
            written.append(plot)
    return written


def finish(run: EvalRun, out: Path) -> None:
    written = write_results(run, out)
    print()
    print(report.recall_table(run) if run.scores else "(no recall scores)")
    if run.short:
        print()
        print(report.short_table(run))
    if run.text_loss:
        print()
        print(report.text_loss_table(run))
    if run.skipped:
        print("\nSkipped:")
        print(report.skipped_list(run))
    print()
    log("wrote " + ", ".join(map(str, written)))
