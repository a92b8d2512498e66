"""Answer extraction and scoring for recall tasks (RULER/HELMET convention: the answer
string must appear in the generation, case-insensitively; several answers score the
fraction found)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    return _CONTROL.sub("\n", text.strip()).strip()


def recall_score(prediction: str, answers: list[str]) -> float:
    if not answers:
        raise ValueError("a recall document needs at least one answer")
    found = clean_prediction(prediction).lower()
    return sum(a.lower() in found for a in answers) / len(answers)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
