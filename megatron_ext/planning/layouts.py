"""Candidate layouts of a recipe on N GPUs: memory per GPU, predicted tokens/s/GPU, the best.

A layout is a set of recipe overrides (TP, CP and its comm type, recompute, offload). Each
one goes through the recipe validator first, so whatever training would refuse (heads not
divisible, a2a beyond the KV heads, a batch that does not split over the data-parallel
ranks) is refused here with the same message. The rest is refused when the memory model
says it will not fit: allocated memory plus fragmentation plus what lives outside PyTorch's
allocator (``Calibration.reserve_gib``) must stay within the GPU's memory.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

from megatron_ext.config.errors import RecipeError
from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import data_parallel_size, validate
from megatron_ext.planning.memory import memory_terms
from megatron_ext.planning.shape import Recompute
from megatron_ext.planning.terms import GIB, Calibration
from megatron_ext.planning.throughput import time_terms
from megatron_ext.planning.workload import RankWork, rank_work

RECOMPUTE_KEYS = ("recompute_granularity", "recompute_method", "recompute_num_layers", "recompute_modules",
                  "selective_recompute_num_layers")
OFFLOAD_ALL_INPUTS = ["qkv_linear", "core_attn", "attn_proj"]


def with_overrides(recipe: Recipe, overrides: Dict[str, object]) -> Recipe:
    out = copy.deepcopy(recipe)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, copy.deepcopy(value))
    return out


def _recompute(granularity=None, method=None, layers=None, modules=None, selective_layers=None) -> Dict[str, object]:
    return {f"parallel.{k}": v for k, v in zip(RECOMPUTE_KEYS, (granularity, method, layers, modules, selective_layers))}


def memory_options(recipe: Recipe) -> Iterator[Dict[str, object]]:
    """Recompute x activation offload x optimizer offload settings to try for one layout."""
    layers = recipe.model.num_layers
    no_offload = {"parallel.cpu_offloading": False, "parallel.cpu_offloading_num_layers": 0,
                  "parallel.fine_grained_activation_offloading": False, "parallel.offload_modules": []}
    recomputes = [_recompute(), _recompute("selective", modules=["mlp"]), _recompute("full", "uniform", 1)]
    recomputes += [_recompute("full", "block", n) for n in range(1, layers)]
    recomputes += [_recompute("selective", modules=["mlp"], selective_layers=n) for n in range(1, layers)]
    for optimizer in (False, True):
        opt = {"optimizer.optimizer_cpu_offload": optimizer, "optimizer.optimizer_offload_fraction": 1.0}
        for rc in recomputes:
            yield {**rc, **no_offload, **opt}
        for rc in recomputes[:2]:  # offloading inputs pays only in layers that keep their activations
            yield {**rc, **no_offload, **opt, "parallel.fine_grained_activation_offloading": True,
                   "parallel.offload_modules": list(OFFLOAD_ALL_INPUTS)}
        for n in range(1, layers):  # layer offloading: Megatron-Core allows it only without recompute
            yield {**_recompute(), **no_offload, **opt, "parallel.cpu_offloading": True,
                   "parallel.cpu_offloading_num_layers": n}


def parallel_options(recipe: Recipe, gpus: int) -> Iterator[Dict[str, object]]:
    """TP (within an 8-GPU node) x CP x CP comm type, with TP communication overlap where it
    can apply (TP > 1, CP 1) and off elsewhere, whatever the recipe says (a hardware profile
    turns it on for its own layout); validation weeds out what cannot work."""
    m = recipe.model
    for tp in (t for t in (1, 2, 4, 8) if t <= gpus and gpus % t == 0):
        for cp in (c for c in range(1, gpus // tp + 1) if (gpus // tp) % c == 0):
            base = {"parallel.tensor_model_parallel_size": tp, "parallel.context_parallel_size": cp,
                    # TP needs sequence parallelism here; without TP the setting does nothing
                    "parallel.sequence_parallel": tp > 1 or recipe.parallel.sequence_parallel,
                    "parallel.hierarchical_context_parallel_sizes": None, "parallel.tp_comm_overlap": False,
                    "parallel.tp_comm_overlap_cfg": None}
            if cp == 1:
                yield {**base, "parallel.cp_comm_type": "a2a"}
                if tp > 1:  # with the recipe's userbuffer settings, if it names any
                    yield {**base, "parallel.cp_comm_type": "a2a", "parallel.tp_comm_overlap": True,
                           "parallel.tp_comm_overlap_cfg": recipe.parallel.tp_comm_overlap_cfg}
                continue
            for comm in ("a2a", "p2p", "all_gather"):
                yield {**base, "parallel.cp_comm_type": comm}
            heads = min(m.num_attention_heads, m.num_query_groups) // tp
            a2a = max((d for d in range(2, cp) if cp % d == 0 and heads % d == 0), default=None)
            if a2a:
                yield {**base, "parallel.cp_comm_type": "a2a+p2p", "parallel.hierarchical_context_parallel_sizes": [a2a, cp // a2a]}


@dataclass
class Evaluation:
    recipe: Recipe
    overrides: Dict[str, object]
    problem: Optional[str] = None       # why validation refuses it
    memory: Dict[str, float] = field(default_factory=dict)  # GiB by term
    memory_gib: float = 0.0             # PyTorch's peak allocation
    needs_gib: float = 0.0              # + fragmentation + memory outside PyTorch
    tokens_per_sec_per_gpu: float = 0.0
    fits: bool = False
    unmeasured: List[str] = field(default_factory=list)  # constants behind it still at their priors

    def describe(self) -> Dict[str, str]:
        p, o = self.recipe.parallel, self.recipe.optimizer
        offload = []
        if p.cpu_offloading:
            offload.append(f"{p.cpu_offloading_num_layers} layers")
        if p.fine_grained_activation_offloading:
            offload.append("+".join(p.offload_modules))
        if o.optimizer_cpu_offload:
            offload.append(f"optimizer {o.optimizer_offload_fraction:g}")
        comm = p.cp_comm_type if p.context_parallel_size > 1 else "-"
        return {"TP": str(p.tensor_model_parallel_size), "CP": str(p.context_parallel_size),
                "comm": "TP overlap" if p.tp_comm_overlap else comm,  # only at CP 1
                "recompute": Recompute.of(self.recipe).describe(self.recipe), "offload": ", ".join(offload) or "-"}


class Planner:
    def __init__(self, recipe: Recipe, gpus: int, gpu_memory_gib: float, calibration: Calibration,
                 dataset, peak_tflops: float, batches: int = 16):
        self.recipe, self.gpus, self.gpu_memory_gib = recipe, gpus, gpu_memory_gib
        self.calibration, self.dataset, self.peak_tflops, self.batches = calibration, dataset, peak_tflops, batches
        self._work: Dict[int, RankWork] = {}

    def work(self, recipe: Recipe) -> RankWork:
        """The mean iteration of the slowest DP rank (time is affine in it, so its time is the mean time)."""
        dp = data_parallel_size(recipe, self.gpus)
        if dp not in self._work:
            works = rank_work(recipe, self.dataset, dp, range(self.batches))
            self._work[dp] = RankWork(tokens=statistics.fmean(w.tokens for w in works),
                                      pairs=statistics.fmean(w.pairs for w in works),
                                      micro_batches=statistics.fmean(w.micro_batches for w in works))
        return self._work[dp]

    def evaluate(self, overrides: Dict[str, object]) -> Evaluation:
        recipe = with_overrides(self.recipe, overrides)
        ev = Evaluation(recipe, overrides)
        try:
            validate(recipe, world_size=self.gpus)
        except RecipeError as e:
            ev.problem = e.problems[0]
            return ev
        c = self.calibration
        memory = memory_terms(recipe, self.gpus)
        time = time_terms(recipe, self.gpus, self.work(recipe), self.peak_tflops)
        ev.memory = {t.name: c.value(t) / GIB for t in memory}
        ev.memory_gib = sum(ev.memory.values())
        ev.needs_gib = ev.memory_gib * (1 + c.fragmentation) + c.reserve_gib
        ev.fits = ev.needs_gib <= self.gpu_memory_gib
        ev.unmeasured = sorted(set(c.unmeasured(memory) + c.unmeasured(time)))
        seconds = c.total(time)
        ev.tokens_per_sec_per_gpu = recipe.train.global_batch_size * recipe.train.seq_length / self.gpus / seconds
        return ev

    def best_per_layout(self) -> List[Evaluation]:
        """For every parallel layout: its fastest fitting memory setting whose prediction rests on
        measured constants only, and a faster one that rests on unmeasured ones (to measure); or
        why none fits. Fitting ones first, fastest first."""
        out = []
        for layout in parallel_options(self.recipe, self.gpus):
            options = [self.evaluate({**layout, **memory}) for memory in memory_options(self.recipe)]
            valid = [e for e in options if e.problem is None]
            fitting = sorted((e for e in valid if e.fits), key=lambda e: -e.tokens_per_sec_per_gpu)
            measured = [e for e in fitting if not e.unmeasured]
            if fitting:
                out += [e for e in (fitting[0], measured[0] if measured else None) if e is not None]
            elif valid:
                out.append(min(valid, key=lambda e: e.needs_gib))  # the closest it gets, refused
            else:
                out.append(options[0])
        unique = list({id(e): e for e in out}.values())
        return sorted(unique, key=lambda e: (e.problem is not None, not e.fits, -e.tokens_per_sec_per_gpu))

    @staticmethod
    def recommend(evaluations: List[Evaluation]) -> Optional[Evaluation]:
        """The fastest fitting layout whose prediction rests on measured constants only."""
        return next((e for e in evaluations if e.fits and not e.problem and not e.unmeasured), None)


def refusal(ev: Evaluation, gpu_memory_gib: float) -> Optional[str]:
    """Why this layout cannot run, in one line; None if it can."""
    if ev.problem:
        return ev.problem
    if not ev.fits:
        largest = sorted(ev.memory.items(), key=lambda kv: -kv[1])[:3]
        return (f"needs {ev.needs_gib:.1f} GiB per GPU > {gpu_memory_gib:g} GiB (PyTorch peak {ev.memory_gib:.1f} GiB; "
                f"largest: {', '.join(f'{name} {gib:.1f}' for name, gib in largest)})")
    return None


def overrides_text(overrides: Dict[str, object], base: Recipe) -> str:
    """``key=value`` for each override that changes ``base``."""
    def value(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ",".join(str(x) for x in v) + "]"
        return str(v)

    def current(key):
        section, name = key.split(".")
        return getattr(getattr(base, section), name)

    return " ".join(f"{k}={value(v)}" for k, v in overrides.items() if current(k) != v)
