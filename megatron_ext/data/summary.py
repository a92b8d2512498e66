"""What a data run reports: skipped records by reason (with examples) and length histograms."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

EXAMPLES_PER_REASON = 3


class CountLog:
    """Counts by reason, with the first few origins ("file:line") of each: of records skipped, or
    of documents repaired, where ``n`` counts what was repaired in one (bytes, turns)."""

    def __init__(self, verb: str = "skipped", noun: str = "records"):
        self.verb, self.noun = verb, noun
        self._counts: Counter = Counter()
        self._records: Counter = Counter()
        self._examples: Dict[str, List[str]] = {}

    def add(self, reason: str, origin: str, n: int = 1) -> None:
        self._counts[reason] += n
        self._records[reason] += 1
        examples = self._examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(origin)

    def counts(self) -> Dict[str, int]:
        return dict(self._counts)

    def examples(self, reason: str) -> List[str]:
        return list(self._examples.get(reason, []))

    def total(self) -> int:
        """Records (skips) or documents (repairs) counted."""
        return sum(self._records.values())

    def lines(self) -> List[str]:
        if not self._counts:
            return [f"{self.verb}: nothing"]
        out = [f"{self.verb} {self.total():,} {self.noun}:"]
        for reason, n in self._counts.most_common():
            records = self._records[reason]
            where = f"{records:,} {self.noun}, " if records != n else ""
            out.append(f"  {n:>10,}  {reason}  ({where}e.g. {', '.join(self._examples[reason])})")
        return out


def _log2_bins(lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    top = int(np.ceil(np.log2(max(int(lengths.max()), 2)))) + 1
    edges = 2 ** np.arange(top + 1)
    counts, _ = np.histogram(lengths, bins=edges)
    return edges, counts


def length_histogram(lengths: Sequence[int], width: int = 40) -> List[str]:
    """Text histogram over power-of-two length buckets, with each bucket's token share."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return ["  (no documents)"]
    edges, counts = _log2_bins(lengths)
    tokens = np.array([lengths[(lengths >= lo) & (lengths < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    first, last = np.nonzero(counts)[0][[0, -1]]
    out = []
    for i in range(first, last + 1):
        bar = "#" * int(round(width * counts[i] / counts.max()))
        out.append(f"  [{edges[i]:>9,}, {edges[i + 1]:>9,})  {counts[i]:>9,} docs  "
                   f"{100 * tokens[i] / lengths.sum():5.1f}% tokens  {bar}")
    return out


def save_length_histogram(lengths: Sequence[int], path: str, title: str,
                          ranges: Sequence[Tuple[int, Optional[int]]] = ()) -> None:
    """PNG of the document-length histogram (log2 buckets), kept length ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = np.asarray(lengths, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(lengths):
        edges, counts = _log2_bins(lengths)
        ax.stairs(counts, edges, fill=True, alpha=0.8, label="documents")
        for lo, hi in ranges:
            ax.axvspan(lo, hi or edges[-1], color="tab:green", alpha=0.12)
        ax.set_xscale("log", base=2)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
