"""Training entry point: ``python -m megatron_ext.train RECIPE.yaml [key=value ...]``.

One process per rank: megatron_ext.launch (one machine) or srun (slurm/launch.sh) start several.

A thin loop on Megatron-Core parts
(GPTModel + TE spec, DDP, distributed optimizer, OptimizerParamScheduler, the
forward-backward schedule, dist_checkpointing). Why not
``megatron.training.pretrain``: it is driven by a global argparse namespace rather than a
typed recipe, it needs Python >= 3.12 (our CPU CI runs 3.11), and what ProLong needs
(per-document CP padding, per-domain loss, MFU from sum(doc_len^2), the optimizer-carrying
stage handoff) would be patches into its 4,700-line loop. See README "Design".

Exit codes: 0 = train_iters reached; 2 = invalid recipe, or a launch the user must fix (no GPU
visible...), said in one line; 3 = stopped early after saving a checkpoint (signal or
train.exit_after_iters; or a signal before the first iteration, nothing new to save): resume by
launching again; anything else = failure.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports below (seconds): an early SIGTERM / SIGUSR1 is kept, not fatal
    from megatron_ext.training import signals

    signals.watch()
    signals.die_with_launcher()

# Light imports only up to main(): --help and recipe mistakes answer before torch,
# Megatron-Core and Transformer Engine load (tests/core/test_cli.py).
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from megatron_ext.config import RecipeError, Recipe, load_recipe, to_yaml
from megatron_ext.launch_env import LaunchError, make_output_folders, rank_env
from megatron_ext.training.checkpoint_files import CheckpointError
from megatron_ext.training.cuda_env import cuda_env_defaults, growable_segments_missing

EXIT_STOPPED_EARLY = 3
EXIT_USER_ERROR = 2


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megatron_ext.train", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 = train_iters reached; 2 = invalid recipe or launch "
                                            "(the message says what to change); 3 = stopped early after saving, "
                                            "launch again to resume.")
    parser.add_argument("recipe", help="recipe YAML: a path, or one shipped with the package such as "
                                       "tiny/prolong_stage1.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.train_iters=100 "
                                                     "data.domains.0.share=0.5")
    return parser.parse_args(argv)


def train(recipe: Recipe) -> int:
    import torch
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ext.model.llama import build_gpt_model, transformer_config
    from megatron_ext.training.checkpoint import Checkpointer
    from megatron_ext.training.distributed import initialize, shutdown
    from megatron_ext.training.loader import build_dataset, micro_batches
    from megatron_ext.training.metrics import MetricLogger, StepStats
    from megatron_ext.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from megatron_ext.training import signals
    from megatron_ext.training.step import DeviceBatches, make_forward_step, reduce_reports

    if not recipe.checkpoint.exit_signal_handler:
        signals.stop_watching()
    layout = initialize(recipe)

    def log(message: str) -> None:  # until the metric logger, which needs the dataset, takes over
        if layout.is_logger:
            print(message, flush=True)

    # Refusals of the checkpoint (in use, damaged, foreign, another recipe) come before the data,
    # model and optimizer are built, which can take minutes.
    checkpointer = Checkpointer(recipe, layout, log=log)
    plan = checkpointer.claim()
    on_gpu = recipe.train.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    dataset = build_dataset(recipe, layout.rank, layout.local_rank)
    logger = MetricLogger(recipe, layout.world_size, layout.is_logger,
                          torch.cuda.get_device_name() if on_gpu else "cpu", list(dataset.domain_names))
    logger.print(f"recipe {recipe.name}: {layout.world_size} ranks = TP {layout.tp_size} x CP {layout.cp_size} "
                 f"x DP {layout.dp_size}\n{to_yaml(recipe)}")

    config = transformer_config(recipe)
    ddp_model = wrap_ddp(recipe, config, build_gpt_model(recipe, config))
    optimizer = build_optimizer(recipe, ddp_model)
    scheduler = build_scheduler(recipe, optimizer)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = ddp_model.no_sync

    checkpointer.log = logger.print
    state = checkpointer.load(plan, ddp_model, optimizer, scheduler)

    t = recipe.train
    num_microbatches = t.global_batch_size // (t.micro_batch_size * layout.dp_size)
    batches = DeviceBatches(micro_batches(recipe, dataset, state.consumed_samples, layout.dp_rank, layout.dp_size),
                            recipe, layout, device)
    forward_step = make_forward_step(use_te=on_gpu, num_domains=len(dataset.domain_names))
    forward_backward = get_forward_backward_func()
    dp_cp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    dp_group = parallel_state.get_data_parallel_group()
    save_every = recipe.checkpoint.save_interval if recipe.checkpoint.save else None
    stop_at = min(t.train_iters, state.iteration + t.exit_after_iters) if t.exit_after_iters else t.train_iters
    ddp_model.train()
    logger.start_progress(state.iteration)

    # The stop flag is agreed on before every iteration, the first one included: a signal that
    # came while the run started or loaded its checkpoint stops it before it trains (nothing
    # to save), one that came during an iteration or a save stops it right after.
    started_at = saved_at = state.iteration

    def save() -> None:
        nonlocal saved_at
        checkpointer.save(state)
        saved_at = state.iteration

    while True:
        stopped_by = signals.any_rank_signalled(device) if recipe.checkpoint.exit_signal_handler else None
        if stopped_by or state.iteration >= stop_at:
            break
        ddp_model.zero_grad_buffer()
        optimizer.zero_grad()
        batches.stats = StepStats()
        reports = forward_backward(forward_step_func=forward_step, data_iterator=batches, model=[ddp_model],
                                   num_microbatches=num_microbatches, seq_length=t.seq_length,
                                   micro_batch_size=t.micro_batch_size, forward_only=False)
        update_ok, grad_norm, _ = optimizer.step()
        if not update_ok:
            raise RuntimeError(f"iteration {state.iteration + 1}: the optimizer skipped the update (non-finite gradients)")
        scheduler.step(increment=1)
        state.iteration += 1
        state.consumed_samples += t.global_batch_size

        totals = reduce_reports(reports, dp_cp_group)
        work = torch.tensor([batches.stats.tokens, batches.stats.flops], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(work, group=dp_group)
        loss = (totals["loss"][0] / totals["loss"][1].clamp(min=1)).item()
        sums, counts = totals["domains"]
        domain_loss = {f"loss/{name}": (sums[i] / counts[i]).item()
                       for i, name in enumerate(dataset.domain_names) if counts[i] > 0}
        memory = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
        reserved = torch.cuda.max_memory_reserved() / 2**30 if on_gpu else 0.0
        logger.step(state.iteration, work[0].item(), work[1].item(), loss, domain_loss,
                    scheduler.get_lr(optimizer.param_groups[0]), None if grad_norm is None else float(grad_norm), memory,
                    reserved)
        if save_every and state.iteration % save_every == 0:
            save()

    if recipe.checkpoint.save and state.iteration > saved_at:
        save()
    if stopped_by:
        if not recipe.checkpoint.save:
            outcome = "checkpoint.save is not set, nothing saved"
        elif state.iteration == started_at:
            outcome = f"stopped before training, nothing new to save (iteration {state.iteration})"
        else:
            outcome = f"checkpoint saved at iteration {saved_at}"
        logger.print(f"received {stopped_by}: {outcome}; exiting (code {EXIT_STOPPED_EARLY}) so the job can be resumed")

    logger.close()
    shutdown()
    return 0 if state.iteration >= t.train_iters else EXIT_STOPPED_EARLY


def main(argv: Optional[List[str]] = None) -> int:
    from megatron_ext.training import signals

    signals.watch()
    signals.die_with_launcher()
    args = parse_args(argv)
    rank = 0
    try:
        rank, world_size, local_rank = rank_env()
        recipe = load_recipe(args.recipe, args.overrides, world_size=world_size)
    except (RecipeError, LaunchError) as e:
        if rank == 0:  # every rank reads the same recipe: one copy of the message is enough
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    from megatron_ext.quiet import hide_unactionable_warnings

    hide_unactionable_warnings()
    # Read when CUDA initializes: before anything touches it (selecting the GPU does).
    settings = cuda_env_defaults(recipe)
    try:
        if recipe.train.preflight:
            from megatron_ext.preflight import preflight

            signals.stop_watching()  # it trains nothing, so there is nothing to save
            return preflight(recipe)
        if recipe.train.device == "cuda":
            from megatron_ext.training.distributed import select_gpu

            select_gpu(local_rank)  # now, not after Megatron's imports: a machine without GPUs answers in seconds
            if rank == 0:  # the run's log says what it ran with
                print("CUDA settings: " + " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
                missing = growable_segments_missing(settings)
                if missing:
                    print(f"warning: {missing}", file=sys.stderr, flush=True)
        log = recipe.logging
        make_output_folders({"checkpoint.save": recipe.checkpoint.save, "logging.tensorboard_dir": log.tensorboard_dir,
                             "logging.metrics_jsonl": log.metrics_jsonl and str(Path(log.metrics_jsonl).parent)})
        return train(recipe)
    except (RecipeError, LaunchError, CheckpointError) as e:  # bad data, no GPU, a refused checkpoint
        print(f"error: {e}" if world_size == 1 else f"error on rank {rank}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
