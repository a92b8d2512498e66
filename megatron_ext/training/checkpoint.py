"""Megatron distributed checkpoints: atomic saves, exact resume, the stage handoff.

Layout (Megatron-LM's, so its tools read it)::

    <dir>/iter_0000250/                    torch_dist checkpoint (metadata.json written last)
    <dir>/latest_checkpointed_iteration.txt

A save goes to ``<dir>/.incomplete_iter_XXXXXXX`` and is renamed into place only after every
rank has finished; the tracker file is replaced atomically after that. A crash at any
point leaves the previous checkpoint as the one that is resumed from.

Start-up precedence: resume from ``checkpoint.load`` (default ``checkpoint.save``) if it holds
a checkpoint: model, optimizer, LR schedule, RNG and data position. Otherwise initialize
from ``checkpoint.pretrained_checkpoint``: weights, and Adam state if
``pretrained_load_optim``, with iteration and schedule starting over. Otherwise start fresh.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_ext.config.loader import to_yaml
from megatron_ext.config.schema import Recipe
from megatron_ext.training.distributed import Layout
from megatron_ext.training.optim import parameters_gathered

TRACKER = "latest_checkpointed_iteration.txt"
_INCOMPLETE = ".incomplete_"


class CheckpointError(RuntimeError):
    pass


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0


def iteration_dir(root: Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def find_checkpoint(path: str | os.PathLike) -> Optional[Path]:
    """The complete checkpoint at ``path``: the path itself if it is one, else the one its
    tracker names. None if there is none yet; CheckpointError if the tracker is broken."""
    path = Path(path)
    if (path / "metadata.json").is_file():
        return path
    tracker = path / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: expected an iteration number, found {text!r}")
    found = iteration_dir(path, int(text))
    if not (found / "metadata.json").is_file():
        raise CheckpointError(f"{tracker} names iteration {text}, but {found} is not a complete checkpoint")
    return found


def _has_optimizer_state(path: Path) -> bool:
    from megatron.core.dist_checkpointing import load_tensors_metadata

    return any(key.startswith("optimizer.") for key in load_tensors_metadata(str(path)))


def _use_recipe_learning_rates(optimizer_state, recipe: Recipe) -> None:
    """Give the saved param groups the recipe's peak / minimum LR before loading them.

    Megatron matches saved to current param groups by a key that includes max_lr / min_lr
    and then copies the saved values over the current ones: a stage with another LR (ProLong
    stage 2 in the released script) would fail to load, and a resumed run would silently
    keep the old LR. The recipe is authoritative (one LR config for all groups here).
    """
    if isinstance(optimizer_state, dict):
        for group in optimizer_state.get("param_groups", []):
            group["max_lr"], group["min_lr"] = recipe.optimizer.lr, recipe.optimizer.min_lr
        for value in optimizer_state.values():
            _use_recipe_learning_rates(value, recipe)
    elif isinstance(optimizer_state, list):
        for value in optimizer_state:
            _use_recipe_learning_rates(value, recipe)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _write_results_in_process() -> None:
    """No helper process for our (synchronous) saves.

    Megatron-Core 0.19's torch_dist writer passes each save's write results through a
    ``multiprocessing.Manager().Queue()``, created at the first save and kept for the life of
    the run, even when the save runs in this process as ours do. That Manager is a ~275 MB
    server process (plus a resource tracker): a signal sent to the whole process group (Slurm,
    scancel, ``kill -- -PGID``) kills it, the next save, the one the signal asked for, fails
    with EOFError / BrokenPipeError, and after a kill it outlives the run. The writer only
    ``put``s and ``get_nowait``s, so an in-process queue does the same job.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not hasattr(filesystem_async, "_results_queue"):  # a Megatron-Core that changed this: look again
        raise CheckpointError("megatron.core.dist_checkpointing.strategies.filesystem_async._results_queue "
                              "is gone; review _write_results_in_process for this Megatron-Core version")
    if not isinstance(filesystem_async._results_queue, queue.Queue):
        filesystem_async._results_queue = queue.Queue()


class Checkpointer:
    def __init__(self, recipe: Recipe, model, optimizer, scheduler, layout: Layout, log=print):
        self.recipe, self.model, self.optimizer, self.scheduler = recipe, model, optimizer, scheduler
        self.layout, self.log = layout, log

    # -- sharded state ---------------------------------------------------------------
    def _metadata(self) -> dict:
        from megatron.core import parallel_state

        # fully_reshardable: the optimizer state can be loaded into any DP/CP/TP layout
        # (stage 1 at TP=2 -> stage 2 at CP=8; resume on a different node count).
        return {
            "distrib_optim_sharding_type": "fully_reshardable" if self.recipe.train.device == "cuda" else "dp_reshardable",
            "singleton_local_shards": False,
            "chained_optim_avoid_prefix": True,
            "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True),
        }

    def _sharded_state(self, with_optimizer: bool, with_rng: bool, loading: bool) -> dict:
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        meta = self._metadata()
        state = {"model": self.model.module.sharded_state_dict(metadata=meta)}
        if with_optimizer:
            state["optimizer"] = self.optimizer.sharded_state_dict(state["model"], is_loading=loading, metadata=meta)
        if with_rng:
            L = self.layout
            state["rng_state"] = ShardedObject(
                "rng_state", None if loading else _rng_state(),
                (L.tp_size, L.cp_size), (L.tp_rank, L.cp_rank), replica_id=L.dp_rank)
        return state

    @staticmethod
    def _strategies(save: bool):
        from megatron.core import parallel_state
        from megatron.core.dist_checkpointing.strategies.fully_parallel import (
            FullyParallelLoadStrategyWrapper,
            FullyParallelSaveStrategyWrapper,
        )
        from megatron.core.dist_checkpointing.strategies.torch import (
            TorchDistLoadShardedStrategy,
            TorchDistSaveShardedStrategy,
        )

        # Every DP(+CP) replica writes / reads a slice instead of rank 0 doing it all.
        group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        if save:
            _write_results_in_process()
            return FullyParallelSaveStrategyWrapper(TorchDistSaveShardedStrategy("torch_dist", 1), group)
        return FullyParallelLoadStrategyWrapper(TorchDistLoadShardedStrategy(), group)

    # -- save ------------------------------------------------------------------------
    def save(self, state: TrainState) -> Path:
        from megatron.core import dist_checkpointing

        root = Path(self.recipe.checkpoint.save)
        final = iteration_dir(root, state.iteration)
        tmp = root / f"{_INCOMPLETE}{final.name}"
        if self.layout.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that crashed
            tmp.mkdir()
        dist.barrier()
        with parameters_gathered(self.model):
            sharded = self._sharded_state(with_optimizer=True, with_rng=True, loading=False)
            sharded["train_state"] = asdict(state)
            sharded["scheduler"] = self.scheduler.state_dict()
            sharded["layout"] = {"tp": self.layout.tp_size, "cp": self.layout.cp_size, "dp": self.layout.dp_size}
            sharded["recipe"] = to_yaml(self.recipe)
            dist_checkpointing.save(sharded, str(tmp), sharded_strategy=self._strategies(save=True),
                                    content_metadata=self._metadata() | {"dp_cp_group": None})
        dist.barrier()
        if self.layout.rank == 0:
            if final.exists():  # re-saving an iteration (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _write_atomically(root / TRACKER, f"{state.iteration}\n")
            self._prune(root, keep=final)
        dist.barrier()
        self.log(f"saved checkpoint {final}")
        return final

    def _prune(self, root: Path, keep: Path) -> None:
        n = self.recipe.checkpoint.keep_last
        if not n:
            return
        complete = sorted(p for p in root.glob("iter_*") if (p / "metadata.json").is_file())
        for old in complete[:-n]:
            if old != keep:
                shutil.rmtree(old)

    # -- load ------------------------------------------------------------------------
    def _load(self, path: Path, with_optimizer: bool, with_rng: bool) -> dict:
        from megatron.core import dist_checkpointing

        sharded = self._sharded_state(with_optimizer, with_rng, loading=True)
        try:
            loaded = dist_checkpointing.load(sharded, str(path), sharded_strategy=self._strategies(save=False))
        except Exception as e:  # name the checkpoint; Megatron's messages are deep
            what = "model and optimizer" if with_optimizer else "model"
            raise CheckpointError(f"could not load the {what} from {path}: {e}") from e
        with torch.no_grad():  # the optimizer copies into views of parameters
            self.model.module.load_state_dict(loaded["model"])
            if with_optimizer:
                _use_recipe_learning_rates(loaded["optimizer"], self.recipe)
                self.optimizer.load_state_dict(loaded["optimizer"])
            else:
                # The optimizer's fp32 master copies must follow the newly loaded weights.
                self.optimizer.reload_model_params()
        if with_rng:
            _set_rng_state(loaded["rng_state"])
        return loaded

    def _warn_schedule_changes(self, saved: dict) -> None:
        current = self.scheduler.state_dict()
        changed = [f"{k} {saved[k]} -> {v}" for k, v in current.items() if k != "num_steps" and saved.get(k) != v]
        if changed:
            self.log("WARNING: the recipe's LR schedule differs from the checkpoint's; the recipe wins: "
                     + ", ".join(changed))

    def load_or_init(self) -> TrainState:
        from megatron.core.dist_checkpointing import load_common_state_dict

        c = self.recipe.checkpoint
        resume_from = c.load or c.save
        path = find_checkpoint(resume_from) if resume_from else None
        if path is not None:
            common = load_common_state_dict(str(path))
            saved = common.get("layout", {})
            same_layout = saved.get("tp") == self.layout.tp_size and saved.get("cp") == self.layout.cp_size
            self._load(path, with_optimizer=True, with_rng=same_layout)
            self._warn_schedule_changes(common["scheduler"])
            self.scheduler.load_state_dict(common["scheduler"])
            state = TrainState(**common["train_state"])
            self.log(f"resumed from {path}: iteration {state.iteration}, {state.consumed_samples} samples consumed"
                     + ("" if same_layout else f"; layout changed from {saved} so RNG state was not restored"))
        elif c.pretrained_checkpoint:
            path = find_checkpoint(c.pretrained_checkpoint)
            if path is None:
                raise CheckpointError(f"checkpoint.pretrained_checkpoint: no checkpoint at {c.pretrained_checkpoint}")
            if c.pretrained_load_optim and not _has_optimizer_state(path):
                raise CheckpointError(f"checkpoint.pretrained_load_optim: {path} holds no optimizer state "
                                      "(e.g. an imported HF model); set checkpoint.pretrained_load_optim=false")
            self._load(path, with_optimizer=c.pretrained_load_optim, with_rng=False)
            state = TrainState()
            self.log(f"initialized from {path} ({'weights and optimizer state' if c.pretrained_load_optim else 'weights only'}); "
                     "iteration and LR schedule start over")
        else:
            state = TrainState()
            self.log("no checkpoint to resume from and no pretrained_checkpoint: random initialization")
        # Re-apply the schedule's LR to the param groups (a loaded optimizer brings old ones).
        self.scheduler.step(increment=0)
        return state
