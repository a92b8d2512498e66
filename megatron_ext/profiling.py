"""Where a training iteration's GPU time goes, from a torch.profiler trace.

``kernels_from_trace`` reads a Chrome trace (``prof.export_chrome_trace``) into GPU kernels,
each with the CPU operations it was launched under (via the launch's correlation id), and
the process group of the collective that launched it (``record_param_comms``'s "Process
Group Description": Megatron names its groups TENSOR_MODEL_PARALLEL_GROUP,
CONTEXT_PARALLEL_GROUP, DATA_PARALLEL_GROUP_WITH_CP, ...). ``categorize`` sorts the kernels
into GEMMs, attention forward / backward, recompute, TP / CP / DP communication, optimizer,
copies and other work, and measures idle time and communication not hidden behind compute.
Both are pure functions of their input, so they are tested on CPU with made-up events.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

COMMUNICATION = re.compile(r"nccl|userbuffers|sendrecv|allgather|reducescatter|alltoall", re.I)
ATTENTION_FORWARD = re.compile(r"flash_fwd|fprop|fmha.*fwd|fused_attn.*fwd|attn_fwd", re.I)
ATTENTION_BACKWARD = re.compile(r"flash_bwd|bprop|fmha.*bwd|dq_dk_dv|fused_attn.*bwd|attn_bwd", re.I)
ATTENTION = re.compile(r"flash|fmha|sdpa|fused_attn", re.I)
GEMM = re.compile(r"gemm|nvjet|cutlass|xmma|cublas", re.I)
OPTIMIZER = re.compile(r"multi_tensor|adam", re.I)
# Megatron's (and TE's) activation checkpointing: the autograd node whose backward runs the
# forward again, then the real backward under nested autograd "evaluate_function" ops.
CHECKPOINT = "CheckpointFunctionBackward"
BACKWARD = "evaluate_function"
GROUPS = (("CONTEXT_PARALLEL", "CP communication"), ("TENSOR", "TP communication"),
          ("DATA_PARALLEL", "DP communication"))


@dataclass(frozen=True)
class Kernel:
    name: str
    start: float                        # microseconds
    duration: float
    launched_under: Tuple[str, ...] = ()  # enclosing CPU operations, outermost first
    group: Optional[str] = None         # process group of the collective that launched it
    is_copy: bool = False               # a memory copy, not a kernel


def _category(k: Kernel) -> str:
    if COMMUNICATION.search(k.name) or (k.group and not k.is_copy):
        if "userbuffers" in k.name.lower():
            return "TP communication"
        for fragment, category in GROUPS:
            if k.group and fragment in k.group:
                return category
        return "other communication"
    if k.is_copy:
        return "memory copies"
    under = k.launched_under
    checkpoint = max((i for i, op in enumerate(under) if CHECKPOINT in op), default=None)
    if checkpoint is not None and not any(BACKWARD in op for op in under[checkpoint + 1:]):
        return "recompute (forward again)"
    if ATTENTION_BACKWARD.search(k.name):
        return "attention backward"
    if ATTENTION_FORWARD.search(k.name):
        return "attention forward"
    if ATTENTION.search(k.name):
        return "attention backward" if any(BACKWARD in op for op in under) else "attention forward"
    if GEMM.search(k.name):
        return "GEMMs"
    if OPTIMIZER.search(k.name) or any("optimizer" in op.lower() for op in under):
        return "optimizer step"
    return "other kernels"


def _union(intervals: Iterable[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out: List[List[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _length(intervals: Sequence[Tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _overlap(a: Sequence[Tuple[float, float]], b: Sequence[Tuple[float, float]]) -> float:
    total, j = 0.0, 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        while k < len(b) and b[k][0] < e:
            total += min(e, b[k][1]) - max(s, b[k][0])
            k += 1
    return total


@dataclass
class TimeTable:
    window_us: float
    by_category: Dict[str, float]   # kernel time per category (may overlap across streams)
    exposed: Dict[str, float]       # communication time not overlapped with any compute kernel
    idle_us: float                  # no kernel running at all

    def rows(self) -> List[Tuple[str, float, float, Optional[float]]]:
        """(category, ms, share of the iteration, exposed ms), largest first; idle last."""
        out = [(c, t / 1e3, t / self.window_us, self.exposed[c] / 1e3 if c in self.exposed else None)
               for c, t in sorted(self.by_category.items(), key=lambda kv: -kv[1])]
        return out + [("idle (no kernel running)", self.idle_us / 1e3, self.idle_us / self.window_us, None)]

    def markdown(self) -> str:
        lines = [f"one iteration: {self.window_us / 1e3:,.1f} ms", "",
                 "| category | ms | % of iteration | exposed ms (not overlapped with compute) |", "|---|---|---|---|"]
        for name, ms, share, exposed in self.rows():
            lines.append(f"| {name} | {ms:,.1f} | {100 * share:.1f}% | {'' if exposed is None else f'{exposed:,.1f}'} |")
        return "\n".join(lines)


def categorize(kernels: Sequence[Kernel], window: Optional[Tuple[float, float]] = None) -> TimeTable:
    """Time by category within ``window`` (default: first kernel start to last kernel end)."""
    if not kernels:
        raise ValueError("no GPU kernels in the trace (was it a CPU run, or the wrong iteration?)")
    start = window[0] if window else min(k.start for k in kernels)
    end = window[1] if window else max(k.start + k.duration for k in kernels)
    spans: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for k in kernels:
        s, e = max(k.start, start), min(k.start + k.duration, end)
        if e > s:
            spans[_category(k)].append((s, e))
    merged = {c: _union(v) for c, v in spans.items()}
    compute = _union(iv for c, v in merged.items() if "communication" not in c and c != "memory copies" for iv in v)
    busy = _union(iv for v in merged.values() for iv in v)
    return TimeTable(
        window_us=end - start,
        by_category={c: _length(v) for c, v in merged.items()},
        exposed={c: _length(v) - _overlap(v, compute) for c, v in merged.items() if "communication" in c},
        idle_us=(end - start) - _length(busy),
    )


def _enclosing(ops: List[Tuple[float, float, str, dict]], times: Iterable[float]) -> Dict[float, List[Tuple[str, dict]]]:
    """For each time, the CPU ops of one thread that hold it, outermost first: one sweep over
    the ops (sorted by start, longer first), keeping a stack of the open ones (ops nest)."""
    out, stack, i = {}, [], 0
    for ts in sorted(set(times)):
        while i < len(ops) and ops[i][0] <= ts:
            while stack and stack[-1][1] < ops[i][0]:
                stack.pop()
            stack.append(ops[i])
            i += 1
        while stack and stack[-1][1] < ts:
            stack.pop()
        out[ts] = [(name, args) for start, end, name, args in stack if end >= ts]
    return out


def kernels_from_trace(trace: dict) -> List[Kernel]:
    """GPU kernels and copies of a Chrome trace, with what launched them."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    threads: Dict[tuple, List[Tuple[float, float, str, dict]]] = defaultdict(list)
    launches: Dict[int, tuple] = {}
    for e in events:
        cat = e.get("cat", "")
        if cat in ("cpu_op", "user_annotation", "python_function"):
            threads[(e.get("pid"), e.get("tid"))].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"], e.get("args", {})))
        elif cat in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = ((e.get("pid"), e.get("tid")), e["ts"])
    launch_times: Dict[tuple, List[float]] = defaultdict(list)
    for thread, ts in launches.values():
        launch_times[thread].append(ts)
    enclosing = {}
    for thread, ops in threads.items():
        ops.sort(key=lambda op: (op[0], -op[1]))
        enclosing[thread] = _enclosing(ops, launch_times[thread])
    out = []
    for e in events:
        if e.get("cat") not in ("kernel", "gpu_memcpy"):
            continue
        launch = launches.get(e.get("args", {}).get("correlation"))
        under = enclosing.get(launch[0], {}).get(launch[1], []) if launch else []
        group = next((args.get("Process Group Description") for name, args in reversed(under)
                      if args.get("Process Group Description")), None)
        out.append(Kernel(e["name"], e["ts"], e.get("dur", 0), tuple(name for name, _ in under), group,
                          e.get("cat") == "gpu_memcpy"))
    return out
