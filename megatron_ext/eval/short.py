"""Short-context tasks (does the long-context model still know what it knew?) through
lm-eval, for those whose data can be loaded: from the network, or offline from the HF
datasets cache. The rest are reported as skipped with the loader's reason."""

from __future__ import annotations

# ProLong's short-task set, with the metric its paper reports for each.
SHORT_TASKS = {
    "hellaswag": "acc_norm,none",
    "mmlu": "acc,none",
    "arc_challenge": "acc_norm,none",
    "winogrande": "acc,none",
    "gsm8k": "exact_match,strict-match",
}


def load_available(task_manager, names: list[str]) -> tuple[list, dict[str, str]]:
    """Build each task (which loads its data); return the built ones and, for the others,
    why not."""
    built, skipped = [], {}
    for name in names:
        try:
            loaded = task_manager.load([name])
        except Exception as e:  # noqa: BLE001 - offline misses arrive as many exception types
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            skipped[name] = (
                f"data not available ({type(e).__name__}: {first_line}); put it in the HF datasets cache "
                "(HF_HOME) from a machine with network, or run with --online"
            )
            continue
        built += list(loaded["groups"].values()) or list(loaded["tasks"].values())
    return built, skipped


def primary_metric(name: str, metrics: dict) -> tuple[str, float]:
    key = SHORT_TASKS.get(name)
    if key is None or key not in metrics:  # a task we have no preference for: its first metric
        key = next(iter(metrics))
    return key, float(metrics[key])


def run_short_tasks(lm, task_manager, names: list[str], limit: int | None, seed: int) -> tuple[dict[str, dict], dict[str, str]]:
    """task -> {"metric", "value", "metrics"}, and skipped task -> reason."""
    import lm_eval

    built, skipped = load_available(task_manager, names)
    if not built:
        return {}, skipped
    out = lm_eval.simple_evaluate(
        model=lm, tasks=built, task_manager=task_manager, limit=limit, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
    )
    table = {**out["results"], **out.get("groups", {})}
    results = {}
    for name in names:
        if name in skipped or name not in table:
            continue
        # "metric,filter" keys only: lm-eval also reports sample counts and stderrs there.
        metrics = {k: v for k, v in table[name].items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
        metric, value = primary_metric(name, metrics)
        results[name] = {"metric": metric, "value": value, "metrics": metrics}
    return results, skipped
