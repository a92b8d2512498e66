"""Megatron distributed checkpoints: atomic saves, exact resume, the stage handoff, and refusals
of checkpoints that are damaged, foreign, crafted or in use.

Layout (Megatron-LM's, so its tools read it; see checkpoint_files.py)::

    <dir>/iter_0000250/                    torch_dist checkpoint (metadata.json written last)
    <dir>/iter_0000250/manifest.json       run id, size and CRC-32 of every file (checkpoint_manifest.py)
    <dir>/latest_checkpointed_iteration.txt
    <dir>/writer.lock                      held by the run that saves here (checkpoint_lock.py)

A save goes to ``<dir>/.incomplete_iter_XXXXXXX`` and is renamed into place only after every
rank has finished; the tracker file is replaced atomically after that. A crash at any
point leaves the previous checkpoint as the one that is resumed from; a failed save removes
its directory, and the next run removes what a killed one left.

Start-up precedence: resume from ``checkpoint.load`` (default ``checkpoint.save``) if it holds
a checkpoint: model, optimizer, LR schedule, RNG and data position. Otherwise initialize
from ``checkpoint.pretrained_checkpoint``: weights, and Adam state if
``pretrained_load_optim``, with iteration and schedule starting over. Otherwise start fresh.
Before any tensor is read: the files are all there (manifest sizes, ``.metadata`` extents),
checksums match, objects unpickle only through the restricted loaders (safe_load.py), and
the recipe may resume from the stored one (recipe_changes.py). A run replaces or prunes
only checkpoints of its own run series (the manifest's run id).
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from megatron_ext.config.loader import to_yaml
from megatron_ext.config.schema import Recipe
from megatron_ext.training.checkpoint_files import (
    DISK_FULL_ERRNOS,
    INCOMPLETE_PREFIX,
    TRACKER,
    CheckpointError,
    DamagedCheckpointError,
    complete_checkpoints,
    find_checkpoint,
    iteration_dir,
    refuse_damaged,
    remove_incomplete_saves,
)
from megatron_ext.training.checkpoint_lock import WriterLock
from megatron_ext.training.checkpoint_manifest import (
    checksum_files,
    data_files,
    has_checksums,
    read_manifest,
    run_id_of,
    throughput,
    verify_checksums,
    write_manifest,
)
from megatron_ext.training.distributed import Layout
from megatron_ext.training.optim import DDP_BUCKET_SIZE, parameters_gathered
from megatron_ext.training.recipe_changes import (check_model_shapes, check_optimizer_state, check_resume,
                                                  saved_model_section)
from megatron_ext.training.safe_load import (describe, original_errors, read_checked, read_common_state,
                                            restricted_unpickling, trusted_te_extra_state)


@dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0


def resume_remedy(iteration: int, path: Path) -> str:
    return f"set checkpoint.ckpt_step={iteration} to resume from it"


def pretrained_remedy(iteration: int, path: Path) -> str:
    return f"set checkpoint.pretrained_checkpoint={path} to use it"


# Megatron-Core's distributed-optimizer formats: model-space tensors any layout loads (gathered
# across the data-parallel group at save and again at load), or each rank's flat buffer shard as
# it is (fast; loads only into the same buffers: recipe_changes.PER_RANK_OPTIMIZER_KEYS).
FULLY_RESHARDABLE, DP_RESHARDABLE = "fully_reshardable", "dp_reshardable"


def saved_optimizer_format(tensor_names) -> str:
    """dp_reshardable for a distributed optimizer's per-rank buffers, else fully_reshardable: any
    layout loads the others (model-space tensors; the regular optimizer's too, into a regular one).
    From the tensor names, so also for checkpoints saved before the format was a setting."""
    return DP_RESHARDABLE if any(n.startswith("optimizer.distributed.") for n in tensor_names) else FULLY_RESHARDABLE


@dataclass
class StartPlan:
    """What ``Checkpointer.load`` will do, found without reading any tensor data."""

    kind: str                        # resume | initialize | fresh
    path: Optional[Path] = None      # None with "initialize": the pretrained checkpoint is not written yet
    common: dict = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    optimizer_format: str = FULLY_RESHARDABLE  # of path's optimizer state


def _checked_common_state(path: Path, remedy: Callable[[int, Path], str]) -> tuple:
    """(common state, tensor names) of a checkpoint whose files are all present; a damaged one is
    refused naming the file and, in a save directory, the newest other complete checkpoint."""
    try:
        _, metadata = read_checked(path)
        common = read_common_state(path)
    except DamagedCheckpointError as e:
        raise refuse_damaged(str(e), path, remedy) from None
    return common, set(metadata.state_dict_metadata)


def plan_start(recipe: Recipe) -> StartPlan:
    """Choose the checkpoint to start from and check it (files, recipe) on every rank alike."""
    c = recipe.checkpoint
    resume_from = c.load or c.save
    with restricted_unpickling():
        path = find_checkpoint(resume_from, c.ckpt_step, resume_remedy, "checkpoint.ckpt_step") if resume_from else None
        if path is not None:
            common, tensors = _checked_common_state(path, resume_remedy)
            if "train_state" not in common:  # every training checkpoint of this project has one
                key, remedy = (("checkpoint.load", "instead of checkpoint.load") if c.load
                               else ("checkpoint.save", "and another checkpoint.save"))
                raise CheckpointError(f"{key}: {path} is not a training "
                                      f"checkpoint of this project (imported, or saved by Megatron-LM): to start from "
                                      f"its weights, set checkpoint.pretrained_checkpoint={resume_from} {remedy}")
            note = check_resume(common["recipe"], recipe, str(path)) if "recipe" in common else None
            optimizer_format = saved_optimizer_format(tensors)
            check_optimizer_state(common, recipe, str(path), optimizer_format == DP_RESHARDABLE, handoff=False)
            return StartPlan("resume", path, common, [note] if note else [], optimizer_format)
        if c.ckpt_step is not None:
            raise CheckpointError(f"checkpoint.ckpt_step={c.ckpt_step}: no checkpoint.load or checkpoint.save to take "
                                  f"it from")
        if not c.pretrained_checkpoint:
            return StartPlan("fresh")
        path = find_checkpoint(c.pretrained_checkpoint, remedy=pretrained_remedy)
        if path is None:
            return StartPlan("initialize")
        common, tensors = _checked_common_state(path, pretrained_remedy)
    saved_model = saved_model_section(common)
    if saved_model:
        check_model_shapes(saved_model, recipe.model, str(path))
    optimizer_format = saved_optimizer_format(tensors)
    if c.pretrained_load_optim:
        if not any(name.startswith("optimizer.") for name in tensors):
            raise CheckpointError(f"checkpoint.pretrained_load_optim: {path} holds no optimizer state "
                                  "(e.g. an imported HF model); set checkpoint.pretrained_load_optim=false")
        check_optimizer_state(common, recipe, str(path), optimizer_format == DP_RESHARDABLE, handoff=True)
    return StartPlan("initialize", path, common, optimizer_format=optimizer_format)


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


def _is_disk_full(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(error, CheckpointException):
            if any(_is_disk_full(e) for e, _ in error.failures.values()):
                return True
        elif "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _total_bytes(files: dict) -> int:
    return sum(entry["bytes"] for entry in files.values())


def _recorded_bytes(checkpoint: Path) -> Optional[int]:
    """A checkpoint's size as its manifest records it; None without a readable manifest."""
    try:
        manifest = read_manifest(checkpoint)
    except CheckpointError:
        return None
    return _total_bytes(manifest["files"]) if manifest else None


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
    """A run's start-up and saves. ``claim()`` needs no model: it locks checkpoint.save and checks
    the checkpoint to start from, so that a refusal comes before the data, model and optimizer
    are built (minutes); ``load(plan, ...)`` then loads into them, and later saves save them."""

    def __init__(self, recipe: Recipe, layout: Layout, log=print):
        self.recipe, self.layout, self.log = recipe, layout, log
        # This run series' id (manifest.json): a resume takes over the checkpoint's.
        self.run_id = uuid.uuid4().hex[:16]

    # -- collectives -----------------------------------------------------------------
    def _on_rank0(self, action: Callable[[], None]) -> None:
        """Run ``action`` on rank 0 only; if it fails, every rank raises, so that all stop together."""
        error = None
        if self.layout.rank == 0:
            try:
                action()
            except Exception as e:
                error = e
        message = [None if error is None else (str(error) if isinstance(error, CheckpointError) else describe(error))]
        if self.layout.world_size > 1:
            dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        if message[0] is not None:
            raise CheckpointError(message[0])

    def _gather(self, value) -> list:
        if self.layout.world_size == 1:
            return [value]
        gathered = [None] * self.layout.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    # -- sharded state ---------------------------------------------------------------
    def _metadata(self, optimizer_format: str) -> dict:
        from megatron.core import parallel_state

        return {
            "distrib_optim_sharding_type": optimizer_format,
            "singleton_local_shards": False,
            "chained_optim_avoid_prefix": True,
            "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True),
        }

    def _format_to_save(self, iteration: int) -> str:
        """fully_reshardable where checkpoint.dist_ckpt_optim_fully_reshardable asks for it (by
        default the run's last save, which the next stage may load at another layout)."""
        when = self.recipe.checkpoint.dist_ckpt_optim_fully_reshardable
        last = iteration >= self.recipe.train.train_iters
        return FULLY_RESHARDABLE if when == "every" or (when == "last" and last) else DP_RESHARDABLE

    def _sharded_state(self, optimizer_format: Optional[str], with_rng: bool, loading: bool) -> dict:
        """The model's sharded state, with the optimizer's in ``optimizer_format`` unless None."""
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        meta = self._metadata(optimizer_format or DP_RESHARDABLE)  # (without the optimizer, unused)
        state = {"model": self.model.module.sharded_state_dict(metadata=meta)}
        if optimizer_format:
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
    def save(self, state: TrainState) -> None:
        """Save ``state``; a failure removes the partial save, says whether the disk is full and
        leaves the previous checkpoint as the one to resume from."""
        try:
            self._save(state)
        except (Exception, CheckpointException) as e:
            raise self._save_failure(state.iteration, e) from None

    def _save(self, state: TrainState) -> None:
        from megatron.core import dist_checkpointing

        began = time.perf_counter()
        root = Path(self.recipe.checkpoint.save)
        final = iteration_dir(root, state.iteration)
        tmp = root / f"{INCOMPLETE_PREFIX}{final.name}"
        if self.layout.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that crashed
            tmp.mkdir()
        dist.barrier()
        with parameters_gathered(self.model):
            optimizer_format = self._format_to_save(state.iteration)
            sharded = self._sharded_state(optimizer_format, with_rng=True, loading=False)
            sharded["train_state"] = asdict(state)
            sharded["scheduler"] = self.scheduler.state_dict()
            sharded["layout"] = {"tp": self.layout.tp_size, "cp": self.layout.cp_size, "dp": self.layout.dp_size,
                                 "ddp_bucket_size": DDP_BUCKET_SIZE}
            sharded["recipe"] = to_yaml(self.recipe)
            dist_checkpointing.save(sharded, str(tmp), sharded_strategy=self._strategies(save=True),
                                    content_metadata=self._metadata(optimizer_format) | {"dp_cp_group": None})
        dist.barrier()
        size, checksums = self._write_manifest(tmp, state.iteration)
        self._on_rank0(lambda: self._publish(root, tmp, final, state.iteration))
        dist.barrier()
        # Timed and sized: a stop on scancel / preemption must save within KillWait (docs/slurm.md).
        self.log(f"saved checkpoint {final}: {size / 2**30:.2f} GiB in {time.perf_counter() - began:.1f} s "
                 f"({checksums})")

    def _write_manifest(self, tmp: Path, iteration: int) -> Tuple[int, str]:
        """Every rank checksums its share of the files; rank 0 writes the manifest. Returns the
        checkpoint's bytes and what was checksummed."""
        with_crc = self.recipe.checkpoint.verify_checksums
        start = time.perf_counter()
        names = data_files(tmp)
        mine = checksum_files(tmp, names[self.layout.rank::self.layout.world_size], with_crc)
        files = {name: entry for part in self._gather(mine) for name, entry in sorted(part.items())}
        seconds = time.perf_counter() - start
        if self.layout.rank == 0:
            write_manifest(tmp, files, self.run_id, iteration, written_by="training")
        size = _total_bytes(files)
        if not with_crc:
            return size, "no checksums: checkpoint.verify_checksums=false"
        return size, f"checksums of {throughput(size, seconds)}"

    def _publish(self, root: Path, tmp: Path, final: Path, iteration: int) -> None:
        if final.exists():  # re-saving an iteration of this run (after a resume from an earlier one)
            if run_id_of(final) != self.run_id:
                raise CheckpointError(f"refusing to replace {final}: this run did not write it; choose another "
                                      f"checkpoint.save")
            self.log(f"replacing {final}, written earlier by this run")
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_atomically(root / TRACKER, f"{iteration}\n")
        self._prune(root, keep=final)

    def _prune(self, root: Path, keep: Path) -> None:
        """keep_last counts and removes only this run series' checkpoints, never another's."""
        n = self.recipe.checkpoint.keep_last
        if not n:
            return
        own = [p for p in complete_checkpoints(root).values() if run_id_of(p) == self.run_id]
        for old in own[:-n]:
            if old != keep:
                shutil.rmtree(old)

    def _save_failure(self, iteration: int, error: BaseException) -> CheckpointError:
        root = Path(self.recipe.checkpoint.save)
        if self.layout.rank == 0:
            shutil.rmtree(root / f"{INCOMPLETE_PREFIX}{iteration_dir(root, iteration).name}", ignore_errors=True)
        if isinstance(error, CheckpointError):
            return error
        free = shutil.disk_usage(root).free
        previous = list(complete_checkpoints(root).values())
        needed = _recorded_bytes(previous[-1]) if previous else None
        message = (f"saving iteration {iteration} to {root} failed ({describe(error)}); {free / 1e9:.2f} GB free "
                   f"on that disk" + (f", a checkpoint takes {needed / 1e9:.2f} GB" if needed else ""))
        if _is_disk_full(error) or (needed and free < needed):
            message += (": the disk is full. Free space and relaunch (checkpoint.keep_last=N needs room for N+1 "
                        "checkpoints); the partial save was removed")
        if previous:
            message += f"; {previous[-1]} is intact and will be resumed from"
        return CheckpointError(message)

    # -- load ------------------------------------------------------------------------
    def _load(self, path: Path, optimizer_format: Optional[str], with_rng: bool) -> dict:
        """Load the model from ``path``, and its optimizer state (saved in ``optimizer_format``)
        unless that is None."""
        from megatron.core import dist_checkpointing

        with_optimizer = optimizer_format is not None
        sharded = self._sharded_state(optimizer_format, with_rng, loading=True)
        try:
            with original_errors():
                loaded = dist_checkpointing.load(sharded, str(path), sharded_strategy=self._strategies(save=False))
                # The optimizer copies into views of parameters.
                with torch.no_grad(), trusted_te_extra_state(loaded["model"]):
                    self.model.module.load_state_dict(loaded["model"])
                    if with_optimizer:
                        _use_recipe_learning_rates(loaded["optimizer"], self.recipe)
                        self.optimizer.load_state_dict(loaded["optimizer"])
                    else:
                        # The optimizer's fp32 master copies must follow the newly loaded weights.
                        self.optimizer.reload_model_params()
        except CheckpointError:
            raise
        except Exception as e:  # name the checkpoint; Megatron's messages are deep
            what = "model and optimizer" if with_optimizer else "model"
            raise CheckpointError(f"could not load the {what} from {path}: {describe(e)}") from e
        if with_rng:
            _set_rng_state(loaded["rng_state"])
        return loaded

    def _verify_checksums(self, path: Path, remedy: Callable[[int, Path], str]) -> None:
        """Every rank checks its share of the files against the manifest."""
        if not self.recipe.checkpoint.verify_checksums:
            self.log(f"checksums of {path} not verified (checkpoint.verify_checksums=false)")
            return
        manifest = read_manifest(path)
        if not has_checksums(manifest):
            self.log(f"{path} records no checksums (saved without them); not verified")
            return
        start = time.perf_counter()
        names = sorted(manifest["files"])[self.layout.rank::self.layout.world_size]
        try:
            result = (verify_checksums(path, manifest, names), None)
        except DamagedCheckpointError as e:
            result = (0, str(e))
        results = self._gather(result)
        errors = [error for _, error in results if error]
        if errors:
            raise refuse_damaged(errors[0], path, remedy)
        total = sum(n for n, _ in results)
        self.log(f"verified the checksums of {path}: {throughput(total, time.perf_counter() - start)} "
                 f"(checkpoint.verify_checksums=false skips this)")

    def _warn_schedule_changes(self, saved: dict) -> None:
        current = self.scheduler.state_dict()
        changed = [f"{k} {saved[k]} -> {v}" for k, v in current.items() if k != "num_steps" and saved.get(k) != v]
        if changed:
            self.log("WARNING: the recipe's LR schedule differs from the checkpoint's; the recipe wins: "
                     + ", ".join(changed))

    def _take_save_directory(self) -> None:
        """Rank 0 locks checkpoint.save for this run and removes what killed saves left there."""
        root = Path(self.recipe.checkpoint.save)

        def take() -> None:
            lock = WriterLock(root, self.log)
            lock.acquire()
            removed = remove_incomplete_saves(root)
            if removed:
                self.log(f"removed what saves that did not finish left in {root}: {', '.join(removed)}")
            lock.write_holder()

        self._on_rank0(take)

    def _check_no_other_run_saves_here(self) -> None:
        """Checkpoints without a manifest (older ones) have no known owner: kept, never pruned."""
        root = Path(self.recipe.checkpoint.save)
        others = [p.name for p in complete_checkpoints(root).values() if run_id_of(p) not in (None, self.run_id)]
        if others:
            raise CheckpointError(f"checkpoint.save {root} holds checkpoints of another run ({', '.join(others)}); "
                                  f"this run would mix its checkpoints and tracker with them: choose another "
                                  f"checkpoint.save")

    def claim(self) -> StartPlan:
        """Lock checkpoint.save and check the checkpoint to start from, reading no tensor: every
        refusal that needs no model (in use, damaged, foreign, another recipe) comes from here."""
        c = self.recipe.checkpoint
        if c.save:
            self._take_save_directory()
        plan = plan_start(self.recipe)
        for note in plan.notes:
            self.log(note)
        if plan.kind == "resume":
            self.run_id = run_id_of(plan.path) or self.run_id
        if c.save:
            self._check_no_other_run_saves_here()
        if plan.kind == "initialize" and plan.path is None:
            raise CheckpointError(f"checkpoint.pretrained_checkpoint: no checkpoint at {c.pretrained_checkpoint}")
        return plan

    def load(self, plan: StartPlan, model, optimizer, scheduler) -> TrainState:
        """Start ``model``, ``optimizer`` and ``scheduler`` as ``plan`` (from ``claim``) says;
        later saves save them."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        c = self.recipe.checkpoint
        with restricted_unpickling():
            if plan.kind == "resume":
                state = self._resume(plan)
            elif plan.kind == "initialize":
                self._verify_checksums(plan.path, pretrained_remedy)
                self._load(plan.path, plan.optimizer_format if c.pretrained_load_optim else None, with_rng=False)
                state = TrainState()
                self.log(f"initialized from {plan.path} ({'weights and optimizer state' if c.pretrained_load_optim else 'weights only'}); "
                         "iteration and LR schedule start over")
            else:
                state = TrainState()
                self.log("no checkpoint to resume from and no pretrained_checkpoint: random initialization")
        # Re-apply the schedule's LR to the param groups (a loaded optimizer brings old ones).
        self.scheduler.step(increment=0)
        return state

    def _resume(self, plan: StartPlan) -> TrainState:
        path, common = plan.path, plan.common
        self._verify_checksums(path, resume_remedy)
        saved = common.get("layout", {})
        same_layout = saved.get("tp") == self.layout.tp_size and saved.get("cp") == self.layout.cp_size
        self._load(path, plan.optimizer_format, with_rng=same_layout)
        self._warn_schedule_changes(common["scheduler"])
        self.scheduler.load_state_dict(common["scheduler"])
        state = TrainState(**common["train_state"])
        self.log(f"resumed from {path}: iteration {state.iteration}, {state.consumed_samples} samples consumed"
                 + ("" if same_layout else f"; layout changed from {saved} so RNG state was not restored"))
        newer = [p.name for it, p in complete_checkpoints(path.parent).items() if it > state.iteration]
        if newer and self.recipe.checkpoint.save and Path(self.recipe.checkpoint.save) == path.parent:
            self.log(f"{', '.join(newer)} are newer than {path.name}, the checkpoint resumed from; this run replaces "
                     f"them when it saves at those iterations")
        t = self.recipe.train
        if state.iteration >= t.train_iters:
            self.log(f"this run is complete: {path} is iteration {state.iteration}, train.train_iters is "
                     f"{t.train_iters}; nothing to train. To train further, relaunch with a larger train.train_iters "
                     f"(the LR schedule then follows the new length unless scheduler.lr_decay_iters is set)")
        return state
