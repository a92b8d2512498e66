"""Markdown tables of one run or several runs side by side."""

from __future__ import annotations

import math

from megatron_ext.eval.results import EvalRun


def format_length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def parse_length(text: str) -> int:
    """A context length as users write it: 4096, 4K, 128k, 1M. ValueError names the text."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise ValueError(f"not a length: {text!r} (use e.g. 4096 or 4K)") from None


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def recall_table(run: EvalRun) -> str:
    """Tasks x lengths, scores in percent; lengths past the trained window are marked."""
    lengths = run.lengths
    trained = run.model.get("max_position_embeddings")
    header = ["task"] + [format_length(n) + ("†" if trained and n > trained else "") for n in lengths]
    lines = [_row(header), _row(["---"] + ["---:"] * len(lengths))]
    for task in sorted(run.scores):
        lines.append(_row([task] + [_pct(run.scores[task].get(n)) for n in lengths]))
    lines.append(_row(["**average**"] + [f"**{_pct(run.average(n))}**" for n in lengths]))
    if trained and any(n > trained for n in lengths):
        lines.append(f"\n† beyond the model's max_position_embeddings ({trained}).")
    return "\n".join(lines)


def short_table(run: EvalRun) -> str:
    lines = [_row(["task", "metric", "score"]), _row(["---", "---", "---:"])]
    lines += [_row([t, r["metric"], _pct(r["value"])]) for t, r in sorted(run.short.items())]
    return "\n".join(lines)


def helmet_table(run: EvalRun) -> str:
    lengths = sorted({n for per in run.helmet.values() for n in per})
    lines = [_row(["HELMET dataset"] + [format_length(n) for n in lengths]), _row(["---"] + ["---:"] * len(lengths))]
    lines += [_row([d] + [f"{per[n]:.1f}" if n in per else "–" for n in lengths]) for d, per in sorted(run.helmet.items())]
    return "\n".join(lines)


def text_loss_table(run: EvalRun) -> str:
    lines = [_row(["held-out text", "loss (nats/token)", "tokens", "documents"]), _row(["---", "---:", "---:", "---:"])]
    lines += [_row([name, f"{r['loss']:.4f}", str(r["tokens"]), str(r["documents"])]) for name, r in sorted(run.text_loss.items())]
    return "\n".join(lines)


def skipped_list(run: EvalRun) -> str:
    return "\n".join(f"- {s['what']}: {s['reason']}" for s in run.skipped)


def run_report(run: EvalRun, title: str) -> str:
    m = run.model
    parts = [
        f"# {title}",
        (
            f"Model `{m.get('path')}` (max_position_embeddings {m.get('max_position_embeddings')}, rope_theta {m.get('rope_theta')}); "
            f"backend {run.settings.get('backend')}, greedy decoding, {run.settings.get('dtype')}, {run.settings.get('attn_implementation')}."
        ),
    ]
    if not run.complete:
        parts.append("**Incomplete run**: the lengths below are those finished so far.")
    if run.scores:
        parts += ["## Recall (score x 100)", recall_table(run)]
    if run.short:
        parts += ["## Short-context tasks", short_table(run)]
    if run.text_loss:
        parts += ["## Held-out text loss", text_loss_table(run)]
    if run.helmet:
        parts += ["## HELMET (its own scoring, x 100)", helmet_table(run)]
    if run.skipped:
        parts += ["## Skipped", skipped_list(run)]
    return "\n\n".join(parts) + "\n"


def compare_table(runs: list[EvalRun], labels: list[str]) -> str:
    """Average recall per length, one row per run; then one table per task."""
    lengths = sorted({n for r in runs for n in r.lengths})
    head = _row(["run"] + [format_length(n) for n in lengths])
    rule = _row(["---"] + ["---:"] * len(lengths))
    parts = ["## Average recall (score x 100)", "\n".join([head, rule] + [_row([lab] + [_pct(r.average(n)) if n in r.lengths else "–" for n in lengths]) for r, lab in zip(runs, labels)])]
    for task in sorted({t for r in runs for t in r.scores}):
        rows = [_row([lab] + [_pct(r.scores.get(task, {}).get(n)) for n in lengths]) for r, lab in zip(runs, labels)]
        parts += [f"### {task}", "\n".join([head, rule] + rows)]
    short_tasks = sorted({t for r in runs for t in r.short})
    if short_tasks:
        rows = [_row([lab] + [_pct(r.short[t]["value"]) if t in r.short else "–" for t in short_tasks]) for r, lab in zip(runs, labels)]
        parts += ["## Short-context tasks (x 100)", "\n".join([_row(["run"] + short_tasks), _row(["---"] + ["---:"] * len(short_tasks))] + rows)]
    held_out = sorted({name for r in runs for name in r.text_loss})
    if held_out:
        rows = [_row([lab] + [f"{r.text_loss[n]['loss']:.4f}" if n in r.text_loss else "–" for n in held_out]) for r, lab in zip(runs, labels)]
        parts += ["## Held-out text loss (nats/token)", "\n".join([_row(["run"] + held_out), _row(["---"] + ["---:"] * len(held_out))] + rows)]
    return "\n\n".join(parts) + "\n"
