"""The training entry point's CUDA environment defaults: set unless the user chose, before CUDA starts."""

import inspect

from megatron_ext import train as entry_point
from megatron_ext.config import load_recipe
from megatron_ext.training.cuda_env import ALLOC_CONF, MAX_CONNECTIONS, cuda_env_defaults

TP2 = load_recipe("recipes/prolong/stage1_64k.yaml")                 # TP 2 with sequence parallelism
CP8 = load_recipe("recipes/prolong/stage2_512k.yaml")                # TP 1


def test_defaults_follow_the_recipe():
    env = {}
    assert cuda_env_defaults(TP2, env) == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: "1"}
    assert env == {ALLOC_CONF: "expandable_segments:True", MAX_CONNECTIONS: "1"}
    env = {}
    cuda_env_defaults(CP8, env)
    assert env == {ALLOC_CONF: "expandable_segments:True"}   # no TP collectives to order


def test_the_users_setting_wins():
    env = {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}
    assert cuda_env_defaults(TP2, env) == {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}
    assert env == {ALLOC_CONF: "max_split_size_mb:512", MAX_CONNECTIONS: "8"}


def test_train_sets_them_before_anything_else():
    """Before any statement or import that could initialize CUDA (it reads both then)."""
    lines = [line.strip() for line in inspect.getsource(entry_point.train).splitlines()[1:] if line.strip()]
    others = [i for i, line in enumerate(lines) if "import cuda_env_defaults" not in line]
    assert lines[others[0]].startswith("cuda_env_defaults(recipe)")
