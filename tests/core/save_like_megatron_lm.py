"""Re-save a checkpoint of ours the way Megatron-LM's training loop saves (torch_dist): the model
under 'model', and as common state its argparse namespace of arguments (with Megatron-Core's
enums and a dtype in it), checkpoint_version 3.0 and the iteration; no recipe, no manifest.

    python tests/core/save_like_megatron_lm.py SOURCE_CHECKPOINT OUT_DIR RECIPE [key=value ...]
"""

import sys
from argparse import Namespace
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.enums import ModelType
from megatron.core.transformer.enums import AttnBackend

from megatron_ext.config import load_recipe
from megatron_ext.model.llama import build_gpt_model, transformer_config
from megatron_ext.training.distributed import initialize

if __name__ == "__main__":  # the checkpoint writer may spawn processes that import this file
    source, out, recipe_path, *overrides = sys.argv[1:]
    recipe = load_recipe(recipe_path, overrides)
    initialize(recipe)
    model = build_gpt_model(recipe, transformer_config(recipe))
    model.load_state_dict(dist_checkpointing.load({"model": model.sharded_state_dict()}, source)["model"])
    args = Namespace(num_layers=recipe.model.num_layers, hidden_size=recipe.model.hidden_size,
                     params_dtype=torch.float32, attention_backend=AttnBackend.auto,
                     model_type=ModelType.encoder_or_decoder, ckpt_format="torch_dist", data_path=["1.0", "web"])
    iteration = 1000
    target = Path(out) / f"iter_{iteration:07d}"
    target.mkdir(parents=True)
    dist_checkpointing.save({"args": args, "checkpoint_version": 3.0, "iteration": iteration,
                             "num_floating_point_operations_so_far": 0, "model": model.sharded_state_dict()},
                            str(target))
    (Path(out) / "latest_checkpointed_iteration.txt").write_text(str(iteration))
