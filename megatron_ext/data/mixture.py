"""A stage's domain mixture: a deterministic map from global sample index to a PackedSample.

Which domain each global index belongs to comes from Megatron's blending index (the C++
``build_blending_indices`` that BlendedDataset uses): at every position it picks the domain
furthest behind its share, so every prefix of the stream, and so every window of it, holds
each domain's share to within two samples. We call the helper directly because
BlendedDataset itself wants MegatronDataset members, a BlendedMegatronDatasetConfig and an
index cache on disk, none of which a ProLong domain needs.

Within a domain, samples come from its packer (packing.py). The stage consumes exactly
``train_iters x global_batch_size`` samples; a domain that cannot supply its share from one
pass over its data is refused with the numbers, unless its ``max_epochs`` allows the upsampling.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_ext.config.errors import RecipeError
from megatron_ext.config.schema import DomainConfig, Recipe
from megatron_ext.data.indexed import PreparedDataset
from megatron_ext.data.packing import PACKERS, PADDING, Packer, Segment
from megatron_ext.data.sample import PackedSample


class DocumentPool:
    """The documents of one domain: the union of its dataset prefixes."""

    def __init__(self, datasets: Sequence[PreparedDataset]):
        self.datasets = list(datasets)
        self.lengths = np.concatenate([d.doc_lengths for d in self.datasets]).astype(np.int64)
        self._first = np.cumsum([0] + [len(d) for d in self.datasets])
        self.has_loss_mask = any(d.loss_mask is not None for d in self.datasets)

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        part = int(np.searchsorted(self._first, doc, side="right")) - 1
        return self.datasets[part].read(doc - int(self._first[part]), start, end)


@dataclass
class DomainPlan:
    """What a stage takes from one domain (printed at startup)."""

    name: str
    packing: str
    share: float
    samples: int
    samples_per_epoch: float
    documents: int
    tokens: int
    notes: List[str]

    @property
    def epochs(self) -> float:
        return self.samples / self.samples_per_epoch if self.samples_per_epoch else float("inf")


def blending_index(shares: Sequence[float], num_samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """(domain of each global sample, its index within the domain), Megatron's greedy interleave."""
    from megatron.core.datasets import helpers

    domain_index = np.zeros(num_samples, dtype=np.int16)
    domain_sample_index = np.zeros(num_samples, dtype=np.int64)
    weights = np.asarray(shares, dtype=np.float64) / float(np.sum(shares))
    helpers.build_blending_indices(domain_index, domain_sample_index, weights, len(weights), num_samples, False)
    return domain_index, domain_sample_index


def _open_domain(i: int, domain: DomainConfig, verify_checksums: bool,
                 problems: List[str]) -> List[Tuple[str, PreparedDataset]]:
    opened = []
    for j, prefix in enumerate(domain.paths):
        try:
            opened.append((f"data.domains[{i}].paths[{j}]", PreparedDataset(prefix, verify_checksums)))
        except (OSError, ValueError) as e:  # not found, unreadable, files that disagree: named by the message
            problems.append(f"data.domains[{i}].paths[{j}]: domain '{domain.name}': {e}")
    return opened


def _check_tokenizers(opened: Dict[str, PreparedDataset], vocab_size: int, problems: List[str]) -> List[str]:
    """Every dataset's tokens must fit the model, and all must come from one tokenizer.
    Returns the keys of datasets without metadata (unverifiable here; checked per sample)."""
    fingerprints: Dict[str, List[str]] = {}
    unverified = []
    for key, ds in opened.items():
        if ds.meta is None:
            unverified.append(key)
            continue
        tok = ds.meta.get("tokenizer") or {}
        if tok.get("vocab_size") and tok["vocab_size"] > vocab_size:
            problems.append(f"{key}: {ds.prefix} was tokenized with {tok.get('name')} (vocabulary "
                            f"{tok['vocab_size']:,}), which does not fit model.vocab_size {vocab_size:,}")
        elif ds.meta.get("max_token_id", -1) >= vocab_size:
            problems.append(f"{key}: {ds.prefix} holds token id {ds.meta['max_token_id']:,}, outside "
                            f"model.vocab_size {vocab_size:,}")
        if tok.get("fingerprint"):
            fingerprints.setdefault(tok["fingerprint"], []).append(f"{key} ({tok.get('name')})")
    if len(fingerprints) > 1:
        groups = "; ".join(", ".join(keys) for keys in fingerprints.values())
        problems.append(f"data.domains: datasets were tokenized with different tokenizers: {groups}")
    return unverified


def _domain_rng(seed: int, name: str) -> np.random.Generator:
    # Keyed by name, not position: reordering the recipe's domains leaves each one's samples alone.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


class MixtureDataset:
    """``SampleDataset`` over a recipe's ``data.domains``."""

    def __init__(self, domains: Sequence[DomainConfig], seq_length: int, num_samples: int, seed: int,
                 vocab_size: int, verify_checksums: bool = False):
        self.seq_length, self.num_samples = seq_length, num_samples
        self.domain_names = [d.name for d in domains]
        self.packing = [d.packing for d in domains]
        self.checksums_verified = verify_checksums
        problems: List[str] = []
        opened = [_open_domain(i, d, verify_checksums, problems) for i, d in enumerate(domains)]
        self.unverified = _check_tokenizers(dict(kv for o in opened for kv in o), vocab_size, problems)
        if problems:
            raise RecipeError(problems)
        self.pools = [DocumentPool([ds for _, ds in o]) for o in opened]
        self.pad_id = self._pad_id([ds for o in opened for _, ds in o])
        self.domain_index, self.domain_sample_index = blending_index([d.share for d in domains], num_samples)
        wanted = np.bincount(self.domain_index, minlength=len(domains))
        self.packers: List[Packer] = []
        self.plans: List[DomainPlan] = []
        for i, (d, pool) in enumerate(zip(domains, self.pools)):
            packer = PACKERS[d.packing](pool.lengths, seq_length, _domain_rng(seed, d.name))
            plan = DomainPlan(d.name, d.packing, d.share, int(wanted[i]), packer.samples_per_epoch, len(pool.lengths),
                              int(pool.lengths.sum()), packer.notes())
            problems += self._supply_problems(i, d, pool, plan)
            self.packers.append(packer)
            self.plans.append(plan)
        if problems:
            raise RecipeError(problems)
        for packer, plan in zip(self.packers, self.plans):
            packer.build(plan.samples)

    def _supply_problems(self, i: int, d: DomainConfig, pool: DocumentPool, plan: DomainPlan) -> List[str]:
        key, s = f"data.domains[{i}]", self.seq_length
        short = pool.lengths < s
        if d.packing == "long" and short.any():
            return [f"{key}.paths: long domain '{d.name}' makes each sample a chunk of one document, but "
                    f"{int(short.sum()):,} of its {len(short):,} documents ({int(pool.lengths[short].sum()):,} "
                    f"tokens) are shorter than train.seq_length {s:,}; prepare it with --min-tokens {s} or use "
                    f"packing: short"]
        if plan.samples_per_epoch == 0:
            return [f"{key}.paths: domain '{d.name}' yields no {s:,}-token sample ({plan.documents:,} documents, "
                    f"{plan.tokens:,} tokens)"]
        if plan.epochs > d.max_epochs:
            return [f"{key}.max_epochs: domain '{d.name}' must supply {plan.samples:,} samples (share {d.share} of "
                    f"{self.num_samples:,} = train.train_iters x train.global_batch_size) = {plan.samples * s:,} "
                    f"tokens, but one pass over its data gives {plan.samples_per_epoch:,.1f} samples "
                    f"({plan.tokens:,} tokens in {plan.documents:,} documents): {plan.epochs:.2f} epochs > "
                    f"max_epochs {d.max_epochs:g}. Add data, lower its share, or set max_epochs >= "
                    f"{np.ceil(plan.epochs * 100) / 100:.2f} to upsample it deliberately"]
        return []

    @staticmethod
    def _pad_id(datasets: Sequence[PreparedDataset]) -> int:
        """SFT padding carries no loss; any in-vocabulary id does. Prefer the tokenizer's EOS."""
        for ds in datasets:
            eos = ((ds.meta or {}).get("tokenizer") or {}).get("eos_id")
            if eos is not None:
                return int(eos)
        return 0

    def __len__(self) -> int:
        return self.num_samples

    def _read(self, domain: int, segment: Segment, with_mask: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        length = segment.end - segment.start
        if segment.doc == PADDING:
            return np.full(length, self.pad_id, dtype=np.int64), np.zeros(length, dtype=np.uint8)
        tokens, mask = self.pools[domain].read(segment.doc, segment.start, segment.end)
        if with_mask and mask is None:  # a mask-less part of a masked domain trains on every token
            mask = np.ones(length, dtype=np.uint8)
        return tokens, mask

    def __getitem__(self, index: int) -> PackedSample:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range [0, {self.num_samples})")
        domain = int(self.domain_index[index])
        segments = self.packers[domain].segments(int(self.domain_sample_index[index]))
        with_mask = self.pools[domain].has_loss_mask or self.packing[domain] == "sft"
        pieces = [self._read(domain, s, with_mask) for s in segments]
        return PackedSample(
            tokens=np.concatenate([t for t, _ in pieces]),
            doc_lengths=np.array([s.end - s.start for s in segments], dtype=np.int64),
            loss_mask=np.concatenate([m for _, m in pieces]) if with_mask else None,
            domain=domain,
        )

    def document_lengths(self, index: int) -> np.ndarray:
        """Sample ``index``'s document (and SFT padding) lengths from its packer, reading no tokens."""
        domain = int(self.domain_index[index])
        segments = self.packers[domain].segments(int(self.domain_sample_index[index]))
        return np.array([s.end - s.start for s in segments], dtype=np.int64)

    def summary(self) -> str:
        lines = [f"data: {self.num_samples:,} samples x {self.seq_length:,} tokens from {len(self.plans)} domains",
                 f"  {'domain':<20} {'packing':<7} {'share':>6} {'samples':>9} {'per epoch':>11} {'epochs':>7} "
                 f"{'documents':>10} {'tokens':>14}"]
        for p in self.plans:
            lines.append(f"  {p.name:<20} {p.packing:<7} {p.share:>6.3f} {p.samples:>9,} {p.samples_per_epoch:>11,.1f} "
                         f"{p.epochs:>7.2f} {p.documents:>10,} {p.tokens:>14,}")
            lines += [f"  {'':<20} {note}" for note in p.notes]
        if self.checksums_verified:
            lines.append("  every dataset file matches the sha256 recorded when it was prepared")
        if self.unverified:
            lines.append(f"  vocabulary not verified (no .meta.json; checked per sample): {', '.join(self.unverified)}")
        return "\n".join(lines)


def build_mixture(recipe: Recipe, verify_checksums: bool) -> MixtureDataset:
    t = recipe.train
    return MixtureDataset(recipe.data.domains, t.seq_length, t.train_iters * t.global_batch_size, t.seed,
                          recipe.model.vocab_size, verify_checksums)
