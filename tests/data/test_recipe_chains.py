"""The shipped stage chains: every recipe writes its own directory, each stage starts from what
the stage before it writes, and the tiny chains (synthetic and mini corpus) run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from megatron_ext.config.loader import compose

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
# stage 1 -> stage 2 (with its optimizer state) -> SFT (weights only)
CHAINS = {
    "prolong": ["prolong/stage1_64k.yaml", "prolong/stage2_512k.yaml", "prolong/sft_64k.yaml"],
    "tiny": ["tiny/prolong_stage1.yaml", "tiny/prolong_stage2.yaml", "tiny/prolong_sft.yaml"],
    "tiny_corpus": ["tiny/prolong_stage1_corpus.yaml", "tiny/prolong_stage2_corpus.yaml",
                    "tiny/prolong_sft_corpus.yaml"],
}
# Small enough for a CPU; the corpus chain keeps the Llama-3 vocabulary its data is tokenized with.
CPU = ["train.device=cpu", "precision.bf16=false", "train.global_batch_size=2", "train.train_iters=2",
       "data.num_workers=0", "logging.progress_bar=false", "logging.tensorboard_dir=null", "model.num_layers=1",
       "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=2", "model.kv_channels=32"]
SHRINK = {"tiny": [*CPU, "train.seq_length=256", "model.vocab_size=512", "data.synthetic.vocab_size=null"],
          "tiny_corpus": [*CPU, "train.seq_length=512"]}


def shipped_recipes() -> list:
    return sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml") if p.parent.name != "models")


def resolved(path: str, monkeypatch):
    monkeypatch.setenv("PROLONG_CKPT", "/ckpt")
    monkeypatch.setenv("LLAMA2_LONG_CKPT", "/ckpt")
    return OmegaConf.to_object(compose(str(RECIPES / path), []))


def test_every_shipped_recipe_writes_its_own_directory(monkeypatch):
    owners: dict = {}
    for path in shipped_recipes():
        r = resolved(path, monkeypatch)
        for key, value in (("checkpoint.save", r.checkpoint.save), ("logging.tensorboard_dir", r.logging.tensorboard_dir),
                           ("logging.metrics_jsonl", r.logging.metrics_jsonl)):
            if value is not None:
                assert value not in owners, f"{path} and {owners[value]} both write {key}={value}"
                owners[value] = path


@pytest.mark.parametrize("chain", CHAINS)
def test_each_stage_starts_from_what_the_stage_before_writes(chain, monkeypatch):
    stages = [resolved(path, monkeypatch) for path in CHAINS[chain]]
    for before, after in zip(stages, stages[1:]):
        assert after.checkpoint.pretrained_checkpoint == before.checkpoint.save, (before.name, after.name)
    assert [s.checkpoint.pretrained_load_optim for s in stages[1:]] == [True, False]


@pytest.mark.slow
def test_tiny_chains_run_end_to_end(tmp_path, mini_corpus, python_env):
    # One process runs the six stages one after the other through the entry point's main():
    # the imports (most of a tiny stage's time) happen once.
    runs = [(str(RECIPES / path), SHRINK[chain]) for chain in ("tiny", "tiny_corpus") for path in CHAINS[chain]]
    driver = ("import json, sys\nfrom megatron_ext.train import main\n"
              "for recipe, overrides in json.loads(sys.argv[1]):\n"
              "    rc = main([recipe, *overrides])\n"
              "    print(f'stage {recipe} exit {rc}', flush=True)\n"
              "    if rc: sys.exit(rc)\n")
    env = {**python_env, "PROLONG_CKPT": str(tmp_path), "PROLONG_MINI_DATA": str(mini_corpus)}
    out = subprocess.run([sys.executable, "-c", driver, json.dumps(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    for chain in ("tiny", "tiny_corpus"):
        stage1, stage2, sft = (Path(path).stem for path in CHAINS[chain])
        assert f"saved checkpoint {tmp_path}/tiny/{stage1}/iter_0000002" in log
        assert f"initialized from {tmp_path}/tiny/{stage1}/iter_0000002 (weights and optimizer state)" in log
        assert f"initialized from {tmp_path}/tiny/{stage2}/iter_0000002 (weights only)" in log
        assert f"saved checkpoint {tmp_path}/tiny/{sft}/iter_0000002" in log
