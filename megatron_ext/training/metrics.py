"""Model FLOPs (attention counted per document), MFU, and the stdout / TensorBoard logger.

Model FLOPs of one training token = 3 x forward (backward is two forward-sized GEMM passes),
activation recompute not counted (that would be hardware FLOPs). Forward, per layer:
  GEMMs      2 x (hidden x (q + 2 kv) + q x hidden + 3 x hidden x ffn)   per token
  attention  causal, per document of d tokens: d (d + 1) / 2 query-key pairs, each
             2 x heads x head_dim for QK^T and the same again for AV
plus the output layer, 2 x hidden x vocab per token. Document masking is what makes
attention cost sum(d^2) instead of seq_length^2; that is what we count.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

from megatron_ext.config.schema import Recipe
from megatron_ext.config.validate import head_dim, layer_gemm_weights, padded_vocab_size

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "A100": 312.0,
                    "B200": 2250.0, "B100": 1750.0, "L40S": 362.0}


def peak_tflops(recipe: Recipe, device_name: str) -> Optional[float]:
    if recipe.logging.peak_tflops:
        return recipe.logging.peak_tflops
    for fragment, tflops in PEAK_BF16_TFLOPS.items():
        if fragment in device_name:
            return tflops
    return None


@dataclass(frozen=True)
class FlopsModel:
    gemm_per_token: float        # forward FLOPs per token, all GEMMs incl. output layer
    attention_per_pair: float    # forward FLOPs per causal query-key pair, all layers

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "FlopsModel":
        m = recipe.model
        return cls(
            gemm_per_token=m.num_layers * 2 * layer_gemm_weights(recipe) + 2 * m.hidden_size * padded_vocab_size(recipe),
            attention_per_pair=m.num_layers * 4 * m.num_attention_heads * head_dim(recipe),
        )

    def training_flops(self, doc_lengths: Iterable[int]) -> float:
        tokens = pairs = 0
        for d in doc_lengths:
            tokens += d
            pairs += d * (d + 1) / 2
        return 3.0 * (self.gemm_per_token * tokens + self.attention_per_pair * pairs)


@dataclass
class StepStats:
    """What one rank accumulates over the micro-batches of one iteration."""

    tokens: float = 0.0
    flops: float = 0.0


@dataclass
class MetricLogger:
    recipe: Recipe
    world_size: int
    is_logger: bool
    device_name: str
    domain_names: list
    writer: object = None
    metrics_jsonl: Optional[Path] = None
    _window_start: float = field(default_factory=time.perf_counter)
    _window: Dict[str, float] = field(default_factory=lambda: {"tokens": 0.0, "flops": 0.0, "iters": 0})
    _bar: object = None

    def __post_init__(self):
        if not self.is_logger:
            return
        if self.recipe.logging.metrics_jsonl:
            self.metrics_jsonl = Path(self.recipe.logging.metrics_jsonl)
        if self.recipe.logging.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(self.recipe.logging.tensorboard_dir)
            except OSError as e:
                self._tensorboard_failed(e)
        self.peak = peak_tflops(self.recipe, self.device_name)

    def start_progress(self, first_iteration: int) -> None:
        if self.is_logger and self.recipe.logging.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.recipe.train.train_iters, initial=first_iteration, unit="it",
                             dynamic_ncols=True, desc=self.recipe.name)

    def print(self, message: str) -> None:
        if not self.is_logger:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def step(self, iteration: int, tokens: float, flops: float, loss: float, domain_loss: Dict[str, float],
             lr: float, grad_norm: Optional[float], max_memory_gib: float,
             max_reserved_gib: float) -> Optional[dict]:
        """Account one iteration (global tokens and FLOPs); log every log_interval."""
        w = self._window
        w["tokens"] += tokens
        w["flops"] += flops
        w["iters"] += 1
        if self._bar is not None:
            self._bar.update(1)
        if iteration % self.recipe.logging.log_interval:
            return None
        elapsed = time.perf_counter() - self._window_start
        tflops_per_gpu = w["flops"] / elapsed / self.world_size / 1e12
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm if grad_norm is not None else math.nan,
            "tokens_per_sec_per_gpu": w["tokens"] / elapsed / self.world_size,
            "tflops_per_gpu": tflops_per_gpu,
            "iteration_time_s": elapsed / w["iters"],
            "max_memory_gib": max_memory_gib,
            # What the caching allocator holds: above max_memory_gib by its fragmentation, and
            # what decides an out-of-memory error.
            "max_reserved_gib": max_reserved_gib,
        }
        if self.is_logger and self.peak:
            metrics["mfu"] = tflops_per_gpu / self.peak
        self._window = {"tokens": 0.0, "flops": 0.0, "iters": 0}
        self._window_start = time.perf_counter()
        if self.is_logger:
            self._emit(iteration, metrics, domain_loss)
        return metrics

    def _emit(self, iteration: int, metrics: dict, domain_loss: Dict[str, float]) -> None:
        mfu = f" | MFU {100 * metrics['mfu']:.1f}%" if "mfu" in metrics else ""
        domains = "".join(f" | {k} {v:.4f}" for k, v in domain_loss.items()) if len(domain_loss) > 1 else ""
        self.print(
            f"iter {iteration}/{self.recipe.train.train_iters} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.3e} | "
            f"grad_norm {metrics['grad_norm']:.3f} | tokens/s/GPU {metrics['tokens_per_sec_per_gpu']:.0f} | "
            f"TFLOP/s/GPU {metrics['tflops_per_gpu']:.1f}{mfu} | {metrics['iteration_time_s'] * 1000:.0f} ms/it | "
            f"mem {metrics['max_memory_gib']:.1f} GiB (reserved {metrics['max_reserved_gib']:.1f}){domains}")
        if self.metrics_jsonl is not None:  # its folder is made at start-up (train.py)
            try:
                with open(self.metrics_jsonl, "a") as f:
                    f.write(json.dumps({"iteration": iteration, **metrics, **domain_loss}) + "\n")
            except OSError as e:
                self.print(f"WARNING: logging.metrics_jsonl switched off: writing to {self.metrics_jsonl} failed ({e})")
                self.metrics_jsonl = None
        if self.writer is not None:
            try:
                for name, value in metrics.items():
                    self.writer.add_scalar(f"train/{name}", value, iteration)
                for name, value in domain_loss.items():
                    self.writer.add_scalar(f"loss_by_domain/{name}", value, iteration)
                self.writer.flush()
            except OSError as e:
                self._tensorboard_failed(e)

    def _tensorboard_failed(self, error: OSError) -> None:
        # A full disk (TensorBoard often writes under checkpoint.save) must not end the run, nor
        # stop a relaunch before the checkpoint code can clean up: metrics still go to stdout.
        # The same holds for logging.metrics_jsonl (in _emit).
        self.writer = None
        self.print(f"WARNING: TensorBoard switched off: writing to {self.recipe.logging.tensorboard_dir} failed "
                   f"({error})")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.writer is not None:
            self.writer.close()
