"""The training entry point's CUDA environment defaults: set unless the user chose, before CUDA starts."""

import os
import subprocess
import sys

import pytest

from megatron_ext import train as entry_point
from megatron_ext.config import load_recipe
from megatron_ext.launch_env import LaunchError
from megatron_ext.training import distributed, signals
from megatron_ext.training.cuda_env import ALLOC_CONF, MAX_CONNECTIONS, USERBUFFERS_SKIP_MULTICAST, cuda_env_defaults

TP2 = load_recipe("recipes/prolong/stage1_64k.yaml")                 # TP 2 with sequence parallelism
CP8 = load_recipe("recipes/prolong/stage2_512k.yaml")                # TP 1, CP 8
DP = load_recipe("recipes/tiny/prolong_stage1.yaml", ["parallel.tensor_model_parallel_size=1"])


def test_defaults_follow_the_recipe():
    env = {}
    assert cuda_env_defaults(TP2, env) == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: "1"}
    assert env == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: "1"}
    env = {}
    cuda_env_defaults(CP8, env)
    assert env == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: "1"}   # CP exchanges too
    env = {}
    cuda_env_defaults(DP, env)
    assert env == {ALLOC_CONF: "expandable_segments:True"}   # nothing to order


def test_the_users_setting_wins():
    env = {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}
    assert cuda_env_defaults(TP2, env) == {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}
    assert env == {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}


TP_OVERLAP = load_recipe("recipes/prolong/stage1_64k.yaml", ["parallel.tp_comm_overlap=true"])


@pytest.mark.parametrize("multicast_off", [{"NCCL_NVLS_ENABLE": "0"}, {"TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"},
                                           {"TORCH_SYMM_MEM_DISABLE_MULTICAST": "True"}])
def test_userbuffers_use_no_multicast_where_nccl_or_pytorch_may_not(multicast_off):
    """TE's userbuffers called cuMulticastCreate on a 2xH200 host whose NCCL and PyTorch had
    NVLink multicast switched off ("MC initialized succesfully" in the TP-overlap logs)."""
    env = dict(multicast_off)
    assert cuda_env_defaults(TP_OVERLAP, env)[USERBUFFERS_SKIP_MULTICAST] == "1"
    assert env[USERBUFFERS_SKIP_MULTICAST] == "1"
    env = dict(multicast_off)
    cuda_env_defaults(TP2, env)                     # no userbuffers without the overlap
    assert USERBUFFERS_SKIP_MULTICAST not in env
    env = {"NCCL_NVLS_ENABLE": "1"}
    cuda_env_defaults(TP_OVERLAP, env)              # where multicast may be used, TE decides
    assert USERBUFFERS_SKIP_MULTICAST not in env
    env = {**multicast_off, USERBUFFERS_SKIP_MULTICAST: "0"}
    assert cuda_env_defaults(TP_OVERLAP, env)[USERBUFFERS_SKIP_MULTICAST] == "0"   # the user's choice wins


def test_set_before_the_gpu_is_selected(monkeypatch):
    """Selecting the GPU initializes CUDA, which reads both: set later, they did nothing
    (2xH200 p2p run out of memory with 20 GiB stranded, expandable segments not in effect)."""
    seen = {}

    def select_gpu(local_rank):
        seen.update({key: os.environ.get(key) for key in (ALLOC_CONF, MAX_CONNECTIONS)})
        raise LaunchError("stopped where CUDA would start")

    monkeypatch.setattr(distributed, "select_gpu", select_gpu)
    # In this process: no signal handlers left behind, and every variable main() sets restored.
    monkeypatch.setattr(signals, "watch", lambda: None)
    monkeypatch.setattr(signals, "die_with_launcher", lambda: None)
    for key in (ALLOC_CONF, MAX_CONNECTIONS, "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert entry_point.main(["tiny/prolong_stage1.yaml", "train.device=cuda", "parallel.tensor_model_parallel_size=1"]) == 2
    assert seen == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: None}


@pytest.mark.parametrize("cuda_first", [False, True])
def test_a_setting_made_too_late_is_reported(python_env, cuda_first):
    """The allocator reads its settings once; a launcher (or wrapper) that starts CUDA before the
    entry point gets a warning naming the variable, not a silent out-of-memory much later."""
    import torch

    if not hasattr(torch._C, "_accelerator_getAllocatorSettings"):
        pytest.skip("this PyTorch cannot say which allocator settings it read")
    early = "torch._C._accelerator_getAllocatorSettings()" if cuda_first else "pass"  # what starting CUDA does
    code = (f"import torch\n{early}\nfrom megatron_ext.config import load_recipe\n"
            "from megatron_ext.training.cuda_env import cuda_env_defaults, growable_segments_missing\n"
            "print(growable_segments_missing(cuda_env_defaults(load_recipe('recipes/tiny/prolong_stage1.yaml'))))")
    env = {k: v for k, v in python_env.items() if k not in (ALLOC_CONF, "PYTORCH_ALLOC_CONF")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    if cuda_first:
        assert f"{ALLOC_CONF}=expandable_segments:True is not in effect" in out.stdout, out.stdout
    else:
        assert out.stdout.strip() == "None", out.stdout
