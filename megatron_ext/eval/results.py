"""The result of one evaluation run, saved as results.json (+ samples.jsonl) and read back
by the plots, tables and the compare command."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ext.eval.scoring import mean

SCHEMA = "megatron_ext.eval/v1"


@dataclass
class SampleResult:
    task: str
    length: int
    index: int
    score: float
    prediction: str
    answers: list[str]
    depth: float | None = None  # percent of the context before the asked-for needle


@dataclass
class EvalRun:
    model: dict
    settings: dict
    scores: dict[str, dict[int, float]] = field(default_factory=dict)  # task -> length -> score in [0, 1]
    samples: list[SampleResult] = field(default_factory=list)
    short: dict[str, dict] = field(default_factory=dict)  # task -> {"metric", "value", "metrics"}
    helmet: dict[str, dict[int, float]] = field(default_factory=dict)  # HELMET dataset -> length -> score
    text_loss: dict[str, dict] = field(default_factory=dict)  # held-out file -> {"loss", "tokens", "documents"}
    skipped: list[dict] = field(default_factory=list)  # {"what", "reason"}
    complete: bool = False

    @property
    def lengths(self) -> list[int]:
        return sorted({n for per_length in self.scores.values() for n in per_length})

    def average(self, length: int) -> float:
        return mean([s[length] for s in self.scores.values() if length in s])

    def depth_grid(self) -> dict[str, dict[int, dict[float, float]]]:
        """task -> length -> depth -> mean score, for tasks whose documents record depth."""
        cells: dict[str, dict[int, dict[float, list[float]]]] = {}
        for s in self.samples:
            if s.depth is not None:
                cells.setdefault(s.task, {}).setdefault(s.length, {}).setdefault(s.depth, []).append(s.score)
        return {t: {n: {d: mean(v) for d, v in sorted(by_d.items())} for n, by_d in sorted(by_n.items())} for t, by_n in cells.items()}

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})

    def merge(self, later: EvalRun) -> None:
        """Take in another evaluation of the same model (other lengths, another session, another
        held-out file); where both measured the same thing, ``later`` wins. Recall made with other
        data settings (haystack, depths, seed) is not comparable: ValueError."""
        if self.settings.get("data") != later.settings.get("data"):
            raise ValueError(f"cannot merge evaluations of {later.model.get('path')} made with other data settings")
        for task, per_length in later.scores.items():
            self.scores.setdefault(task, {}).update(per_length)
        replaced = {(s.task, s.length) for s in later.samples}
        self.samples = [s for s in self.samples if (s.task, s.length) not in replaced] + later.samples
        self.short.update(later.short)
        for dataset, per_length in later.helmet.items():
            self.helmet.setdefault(dataset, {}).update(per_length)
        self.text_loss.update(later.text_loss)
        measured = set(later.scores) | set(later.short) | set(later.helmet) | set(later.text_loss)
        self.skipped = [s for s in self.skipped if s["what"] not in measured and s not in later.skipped] + later.skipped
        lengths = sorted(set(self.settings.get("lengths", [])) | set(later.settings.get("lengths", [])))
        self.model, self.settings = later.model, {**later.settings, "lengths": lengths}
        self.complete = self.complete and later.complete

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            "schema": SCHEMA,
            "complete": self.complete,
            "model": self.model,
            "settings": self.settings,
            "scores": {t: {str(n): v for n, v in per.items()} for t, per in self.scores.items()},
            "average": {str(n): self.average(n) for n in self.lengths},
            "depth_grid": {t: {str(n): {str(d): v for d, v in g.items()} for n, g in per.items()} for t, per in self.depth_grid().items()},
            "short": self.short,
            "helmet": {t: {str(n): v for n, v in per.items()} for t, per in self.helmet.items()},
            "text_loss": self.text_loss,
            "skipped": self.skipped,
        }
        _atomic_write(out_dir / "samples.jsonl", "".join(json.dumps(asdict(s)) + "\n" for s in self.samples))
        path = out_dir / "results.json"
        _atomic_write(path, json.dumps(_finite(summary), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalRun:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no results.json (run tools/eval.py first)")
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an evaluation result of this tool (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        samples_file = path.parent / "samples.jsonl"
        samples = [SampleResult(**json.loads(line)) for line in samples_file.read_text().splitlines()] if samples_file.is_file() else []
        return cls(
            model=data["model"],
            settings=data["settings"],
            scores={t: {int(n): v for n, v in per.items()} for t, per in data["scores"].items()},
            samples=samples,
            short=data.get("short", {}),
            helmet={t: {int(n): v for n, v in per.items()} for t, per in data.get("helmet", {}).items()},
            text_loss=data.get("text_loss", {}),
            skipped=data.get("skipped", []),
            complete=data.get("complete", False),
        )


def _finite(obj):
    """JSON has no NaN: missing values become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> None:
    # A crash mid-write must not destroy the previous results.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
