"""Loads converted checkpoints into Megatron's GPTModel (CPU emulation) and writes their logits.

Runs in its own process(es): CPU emulation patches torch.cuda for the rest of a process.

    [torchrun --standalone --nproc-per-node N] python tests/convert/megatron_worker.py JOB.json

JOB = {"tensor_parallel": N, "cases": [{"checkpoint": DIR, "model": {ModelConfig fields},
       "tokens": FILE.pt, "logits": FILE.pt, "save": DIR or null}]}
"save" re-saves the model at this layout with the training Checkpointer (model, distributed
optimizer, RNG): after one optimizer step on zero gradients without weight decay, which
creates Adam's state and leaves every weight bit-identical.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_ext.config.schema import ModelConfig  # noqa: E402
from megatron_ext.convert.verify import inference_recipe, load_megatron, megatron_logits  # noqa: E402
from megatron_ext.training.checkpoint import TrainState  # noqa: E402
from megatron_ext.training.distributed import initialize, shutdown  # noqa: E402


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    layout = None
    for case in job["cases"]:
        model = ModelConfig(**case["model"])
        tokens = torch.load(case["tokens"])
        recipe = inference_recipe(model, Path(case["checkpoint"]), job["tensor_parallel"], world_size, "cpu",
                                  bf16=False, seq_length=tokens.shape[1])
        recipe.checkpoint.save = case.get("save")
        recipe.optimizer.weight_decay = 0.0
        layout = layout or initialize(recipe)  # parallel state is set up once per process
        ddp_model, checkpointer = load_megatron(recipe, layout, log=lambda *_: None)
        logits = megatron_logits(ddp_model.module, tokens, model.vocab_size, use_te=False)
        if layout.rank == 0:
            torch.save(logits, case["logits"])
        if case.get("save"):
            ddp_model.zero_grad_buffer()
            checkpointer.optimizer.zero_grad()
            checkpointer.optimizer.step()
            checkpointer.save(TrainState())
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
