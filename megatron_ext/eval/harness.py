"""The recall suite in lm-eval: RULER's synthetic tasks plus our local tasks (lm_eval_tasks/),
one simple_evaluate call per context length so that --limit applies per length and a crash
at 128K keeps the shorter lengths' results."""

from __future__ import annotations

import os
from pathlib import Path

from megatron_ext.eval.recall_data import RECALL_TASKS, DataSettings
from megatron_ext.eval.results import SampleResult

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"
# RULER tasks that generate their data offline (the essay haystacks download Paul Graham essays).
RULER_OFFLINE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
RULER_NEEDS_NETWORK = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery", "ruler_qa_squad", "ruler_qa_hotpot")
LOCAL_TASKS = tuple(RECALL_TASKS)
DEFAULT_TASKS = LOCAL_TASKS + RULER_OFFLINE_TASKS
# Room for the answer prefix lm-eval appends after RULER sized a prompt (and ruler_fwe overshoots).
LENGTH_MARGIN = 256


def set_offline_environment(nltk_dir: Path) -> None:
    """Call before importing lm_eval, datasets or huggingface_hub: they read these at import.

    RULER's prepare_niah downloads NLTK's punkt_tab at import time unless it can find it; the
    offline tasks never use it, so an empty folder of that name satisfies the lookup."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    (nltk_dir / "tokenizers" / "punkt_tab").mkdir(parents=True, exist_ok=True)
    existing = os.environ.get("NLTK_DATA")
    os.environ["NLTK_DATA"] = f"{existing}{os.pathsep}{nltk_dir}" if existing else str(nltk_dir)


def length_metric(length: int) -> dict:
    # RULER's process_results reports -1 for lengths a document does not have; this
    # aggregation drops them, so listing every requested length keeps the means honest.
    return {"metric": str(length), "aggregation": mean_ignoring_placeholders, "higher_is_better": True}


def mean_ignoring_placeholders(values: list[float]) -> float:
    real = [v for v in values if v != -1]
    return sum(real) / len(real) if real else -1


def task_config(task_manager, name: str, length: int, metadata: dict) -> dict:
    """The task's own YAML config, with metric_list and data size set for one length."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise KeyError(f"lm-eval knows no task {name!r}")
    config = load_yaml(entry.yaml_path, resolve_func=True)
    config["metric_list"] = [length_metric(length)]
    config["metadata"] = {**config.get("metadata", {}), **metadata, "max_seq_lengths": [length]}
    if name in RECALL_TASKS:
        config["generation_kwargs"] = {**config["generation_kwargs"], "max_gen_toks": RECALL_TASKS[name].max_gen_toks}
    return config


def make_task_manager(include_paths: list[str] = ()):
    """lm-eval's tasks, ours, and any task directories the user adds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASK_DIR), *include_paths])


def run_lm_eval_length(
    lm,
    task_manager,
    tasks: list[str],
    length: int,
    tokenizer_path: str,
    data: DataSettings,
    limit: int | None = None,
    apply_chat_template: bool = False,
) -> tuple[dict[str, float], list[SampleResult]]:
    """Scores (task -> mean over documents) and per-document results at one length."""
    import lm_eval

    metadata = {
        "tokenizer": tokenizer_path,
        "num_samples": data.num_samples,
        "depths": list(data.depths),
        "data_seed": data.seed,
        "haystack": data.haystack,
    }
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task_config(task_manager, t, length, metadata) for t in tasks],
        task_manager=task_manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        apply_chat_template=apply_chat_template,
        random_seed=data.seed,
        numpy_random_seed=data.seed,
        torch_random_seed=data.seed,
    )
    key = f"{length},none"
    scores, samples = {}, []
    for name in tasks:
        scores[name] = float(out["results"][name][key])
        for s in out["samples"][name]:
            doc = s["doc"]
            samples.append(
                SampleResult(
                    task=name,
                    length=length,
                    index=int(s["doc_id"]),
                    score=float(s[str(length)]),
                    prediction=s["filtered_resps"][0],
                    answers=list(doc["outputs"]),
                    depth=doc.get("depth"),
                )
            )
    return scores, samples
