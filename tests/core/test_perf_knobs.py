"""Memory/throughput knobs: recompute is exact, overlapped parameter gathers still checkpoint
the current weights, and what cannot run here (or at all) is refused with the key named."""

from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from megatron_ext.config import RecipeError, load_recipe
from train_runner import losses, train

TINY = "recipes/tiny/prolong_stage1.yaml"
TINY_CPU = [TINY, "train.device=cpu", "precision.bf16=false", "train.seq_length=256", "train.global_batch_size=4",
            "model.vocab_size=512", "data.synthetic.vocab_size=null", "data.num_workers=0",
            "logging.tensorboard_dir=null", "logging.progress_bar=false"]


@pytest.mark.slow
def test_recompute_gives_the_same_losses_as_none(tmp_path, python_env):
    settings = {
        "none": [],
        "selective": ["parallel.recompute_granularity=selective", "parallel.recompute_modules=[core_attn,mlp]"],
        "selective_2_of_4": ["parallel.recompute_granularity=selective", "parallel.recompute_modules=[core_attn,mlp]",
                             "parallel.selective_recompute_num_layers=2"],
        "full_block": ["parallel.recompute_granularity=full", "parallel.recompute_method=block",
                       "parallel.recompute_num_layers=2"],
    }
    curves = {}
    for name, overrides in settings.items():
        rc, out, m = train([*TINY_CPU, "train.train_iters=3", "checkpoint.save=null", "checkpoint.save_interval=null",
                            *overrides], tmp_path / f"{name}.jsonl", python_env)
        assert rc == 0, out
        curves[name] = losses(m)
    assert len(curves["none"]) == 3
    assert curves["selective"] == curves["none"] and curves["full_block"] == curves["none"]
    assert curves["selective_2_of_4"] == curves["none"]


def _model_tensors(checkpoint: Path, out: Path) -> dict:
    dcp_to_torch_save(checkpoint, out)
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith("optimizer")}


@pytest.mark.slow
def test_overlapped_param_gather_checkpoints_the_current_weights(tmp_path, python_env):
    """With overlap_param_gather the updated weights are all-gathered during the next forward;
    a checkpoint must not hold the previous iteration's (a weights-only handoff would read them)."""
    runs = {}
    for overlap in ("false", "true"):
        rc, out, m = train([*TINY_CPU, "train.train_iters=4", f"checkpoint.save={tmp_path}/{overlap}",
                            "checkpoint.save_interval=2", f"parallel.overlap_param_gather={overlap}"],
                           tmp_path / f"{overlap}.jsonl", python_env, nproc=2)
        assert rc == 0, out
        runs[overlap] = losses(m)
    assert runs["true"] == runs["false"]  # saving mid-run does not disturb the overlapped gathers
    for iteration in ("iter_0000002", "iter_0000004"):
        plain = _model_tensors(tmp_path / "false" / iteration, tmp_path / "plain.pt")
        overlapped = _model_tensors(tmp_path / "true" / iteration, tmp_path / "overlapped.pt")
        assert plain.keys() == overlapped.keys() and plain
        assert all(torch.equal(plain[k], overlapped[k]) for k in plain), iteration


def _problems(*overrides):
    with pytest.raises(RecipeError) as e:
        load_recipe(TINY, list(overrides))
    return "\n".join(e.value.problems)


@pytest.mark.parametrize("overrides, expected", [
    (["parallel.recompute_modules=[mlp]"], "parallel.recompute_modules: only used with recompute_granularity=selective"),
    (["parallel.recompute_granularity=selective", "parallel.recompute_modules=[moe]"],
     "parallel.recompute_modules: ['moe'] not among core_attn, mlp"),
    (["parallel.recompute_granularity=selective", "parallel.recompute_modules=[mlp,layernorm]"],
     "parallel.recompute_modules: ['layernorm'] not among core_attn, mlp (Transformer Engine fuses the RMSNorms"),
    (["parallel.selective_recompute_num_layers=2"],
     "parallel.selective_recompute_num_layers: only used with recompute_granularity=selective"),
    (["parallel.recompute_granularity=selective", "parallel.selective_recompute_num_layers=4"],
     "parallel.selective_recompute_num_layers: must be fewer than model.num_layers=4, got 4"),
    (["parallel.cpu_offloading=true", "parallel.cpu_offloading_num_layers=4"],
     "parallel.cpu_offloading_num_layers: must be in [1, model.num_layers=4), got 4"),
    (["parallel.cpu_offloading=true", "parallel.cpu_offloading_num_layers=2", "parallel.recompute_granularity=selective"],
     "parallel.cpu_offloading: Megatron-Core cannot combine layer offloading with activation recompute"),
    (["parallel.cpu_offloading=true", "parallel.cpu_offloading_num_layers=2", "train.device=cpu"],
     "parallel.cpu_offloading: needs Transformer Engine on GPUs; train.device is cpu"),
    (["parallel.fine_grained_activation_offloading=true"], "parallel.offload_modules: list the submodules"),
    (["parallel.fine_grained_activation_offloading=true", "parallel.offload_modules=[mlp_norm]"],
     "parallel.offload_modules: ['mlp_norm'] not among qkv_linear, core_attn, attn_proj (Transformer Engine fuses"),
    (["parallel.fine_grained_activation_offloading=true", "parallel.offload_modules=[attn_proj]"],
     "parallel.offload_modules: attn_proj needs core_attn too"),
    (["parallel.offload_modules=[core_attn]"], "parallel.offload_modules: only used with fine_grained_activation_offloading=true"),
    (["parallel.fine_grained_activation_offloading=true", "parallel.offload_modules=[core_attn]", "train.device=cpu"],
     "parallel.fine_grained_activation_offloading: needs Transformer Engine on GPUs"),
    (["parallel.overlap_param_gather=true", "parallel.overlap_grad_reduce=false"],
     "parallel.overlap_param_gather: needs use_distributed_optimizer=true and overlap_grad_reduce=true"),
    (["parallel.tp_comm_overlap=true"], "parallel.tp_comm_overlap: overlaps the sequence-parallel all-gathers"),
    (["parallel.tp_comm_overlap=true", "parallel.tensor_model_parallel_size=2", "model.num_query_groups=2",
      "parallel.context_parallel_size=2"], "parallel.tp_comm_overlap: Transformer Engine's userbuffers have a fixed"),
    (["parallel.tp_comm_overlap=true", "parallel.tensor_model_parallel_size=2", "model.num_query_groups=2",
      "train.device=cpu", "parallel.sequence_parallel=false"], "parallel.tp_comm_overlap: needs Transformer Engine"),
    (["optimizer.optimizer_cpu_offload=true", "optimizer.optimizer_offload_fraction=0"],
     "optimizer.optimizer_offload_fraction: must be in (0, 1], got 0"),
    (["optimizer.optimizer_cpu_offload=true", "parallel.use_distributed_optimizer=false"],
     "optimizer.optimizer_cpu_offload: needs parallel.use_distributed_optimizer=true"),
    (["optimizer.optimizer_cpu_offload=true", "train.device=cpu"], "optimizer.optimizer_cpu_offload: runs on GPUs only"),
])
def test_knob_problems_are_refused_with_the_key(overrides, expected):
    assert expected in _problems(*overrides)


def test_knobs_that_fit_together_validate():
    r = load_recipe("recipes/prolong/stage1_64k.yaml", [
        "parallel.recompute_granularity=selective", "parallel.recompute_method=null", "parallel.recompute_num_layers=null",
        "parallel.recompute_modules=[mlp]", "parallel.fine_grained_activation_offloading=true",
        "parallel.offload_modules=[core_attn,attn_proj]", "parallel.overlap_param_gather=true",
        "parallel.tp_comm_overlap=true", "optimizer.optimizer_cpu_offload=true", "optimizer.optimizer_offload_fraction=0.5"])
    assert r.parallel.recompute_modules == ["mlp"] and r.optimizer.optimizer_offload_fraction == 0.5


PROFILES = {  # profile: (GPU memory in GiB, the stages it is for)
    "h200_64k": (140.4, ["stage1_64k", "sft_64k"]), "h100_64k": (79.6, ["stage1_64k", "sft_64k"]),
    "h200_512k": (140.4, ["stage2_512k"]), "h100_512k": (79.6, ["stage2_512k"]),
}


def test_every_shipped_profile_is_listed():
    shipped = {p.stem for p in (Path(__file__).resolve().parents[2] / "recipes/hardware").glob("*.yaml")}
    assert shipped == set(PROFILES)


@pytest.mark.parametrize("hardware,stage", [(h, s) for h, (_, stages) in PROFILES.items() for s in stages])
def test_hardware_profiles_compose_with_their_stages_and_fit(tmp_path, hardware, stage):
    """A profile changes only the layout and memory settings of its stage, and the planner
    (calibrated on the measured runs) says the composed job fits 8 GPUs of that memory."""
    from megatron_ext.planning.layouts import Planner, refusal
    from megatron_ext.planning.terms import Calibration
    from megatron_ext.planning.workload import workload_dataset

    recipe = tmp_path / "composed.yaml"
    root = Path(__file__).resolve().parents[2] / "recipes"
    recipe.write_text(f"base: [{root}/prolong/{stage}.yaml, {root}/hardware/{hardware}.yaml]\n")
    composed, alone = load_recipe(recipe, world_size=8), load_recipe(root / f"prolong/{stage}.yaml")
    assert composed.train == alone.train and composed.data == alone.data   # the stage stays the stage
    memory, _ = PROFILES[hardware]
    dataset, _ = workload_dataset(composed, 4096)
    planner = Planner(composed, 8, memory, Calibration.load(), dataset, 989.0, batches=2)
    assert refusal(planner.evaluate({}), memory) is None


COUNT_RECOMPUTES = """
import sys
import torch
from megatron.core import tensor_parallel
from megatron_ext.config import load_recipe
from megatron_ext.model.llama import build_gpt_model, transformer_config
from megatron_ext.training.distributed import initialize

recipe = load_recipe(sys.argv[1], sys.argv[2:])
initialize(recipe)
model = build_gpt_model(recipe, transformer_config(recipe))
calls = []
checkpoint = tensor_parallel.checkpoint
tensor_parallel.checkpoint = lambda function, *args, **kwargs: calls.append(function) or checkpoint(function, *args, **kwargs)
tokens = torch.randint(0, recipe.model.vocab_size, (1, 64))
positions = torch.arange(64).unsqueeze(0)
causal = torch.triu(torch.ones(1, 1, 64, 64), diagonal=1).bool()  # True: masked out
model(tokens, positions, causal, labels=tokens).sum().backward()
print(len(calls))
"""


@pytest.mark.parametrize("selective_layers, expected", [("null", 8), ("1", 2)])
def test_selective_recompute_runs_in_the_first_layers_only(selective_layers, expected, python_env):
    """parallel.selective_recompute_num_layers: Megatron-Core checkpoints core_attn and mlp in
    that many layers of the 4, not in every layer."""
    import subprocess
    import sys

    env = {**python_env, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(__import__("megatron_ext.net", fromlist=["free_port"]).free_port())}
    out = subprocess.run([sys.executable, "-c", COUNT_RECOMPUTES, *TINY_CPU, "parallel.recompute_granularity=selective",
                          "parallel.recompute_modules=[core_attn,mlp]",
                          f"parallel.selective_recompute_num_layers={selective_layers}"],
                         cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == str(expected)
