"""The training entry point asks for expandable allocator segments unless the user chose."""

import inspect

from megatron_ext import train as entry_point
from megatron_ext.training.cuda_allocator import ALLOC_CONF, use_expandable_segments


def test_expandable_segments_by_default():
    env = {}
    assert use_expandable_segments(env) == "expandable_segments:True"
    assert env == {ALLOC_CONF: "expandable_segments:True"}


def test_the_users_setting_wins():
    env = {ALLOC_CONF: "max_split_size_mb:512"}
    assert use_expandable_segments(env) == "max_split_size_mb:512"
    assert env == {ALLOC_CONF: "max_split_size_mb:512"}


def test_train_sets_it_before_anything_else():
    """Before any statement or import that could initialize CUDA (PyTorch reads it then)."""
    lines = [line.strip() for line in inspect.getsource(entry_point.train).splitlines()[1:] if line.strip()]
    others = [i for i, line in enumerate(lines) if "cuda_allocator" not in line]
    assert lines[others[0]].startswith("use_expandable_segments()")
