"""Recipes: every shipped one validates; bad input is refused with the key named."""

from pathlib import Path

import pytest

from megatron_ext.config import RecipeError, load_recipe
from megatron_ext.config.validate import padded_vocab_size

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGES = sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name not in ("models", "hardware"))
TINY = RECIPES / "tiny" / "prolong_stage1.yaml"


@pytest.mark.parametrize("path", STAGES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.train.seq_length <= recipe.model.max_position_embeddings


def test_prolong_schedule_matches_the_paper():
    s1 = load_recipe(RECIPES / "prolong/stage1_64k.yaml")
    s2 = load_recipe(RECIPES / "prolong/stage2_512k.yaml")
    sft = load_recipe(RECIPES / "prolong/sft_64k.yaml")
    assert (s1.train.seq_length, s1.train.global_batch_size, s1.train.train_iters) == (65536, 64, 5000)
    assert (s2.train.seq_length, s2.train.global_batch_size, s2.train.train_iters) == (524288, 16, 2500)
    assert (sft.train.seq_length, sft.train.global_batch_size, sft.train.train_iters) == (65536, 64, 250)
    assert (s1.model.rotary_base, s2.model.rotary_base, sft.model.rotary_base) == (8e6, 1.28e8, 1.28e8)
    assert s1.optimizer.min_lr == pytest.approx(0.1 * s1.optimizer.lr)
    assert (sft.optimizer.lr, sft.optimizer.min_lr, sft.scheduler.lr_warmup_fraction) == (2e-5, 2e-6, 0.05)
    assert (s1.optimizer.adam_beta2, s1.optimizer.weight_decay, s1.optimizer.clip_grad) == (0.95, 0.1, 1.0)
    # The handoff: stage 2 takes stage 1's optimizer state, SFT only the weights.
    assert s2.checkpoint.pretrained_checkpoint == s1.checkpoint.save and s2.checkpoint.pretrained_load_optim
    assert sft.checkpoint.pretrained_checkpoint == s2.checkpoint.save and not sft.checkpoint.pretrained_load_optim
    assert sum(d.share for d in s1.data.domains) == pytest.approx(1.0)
    assert s2.parallel.context_parallel_size == 8


def test_llama2_long_raises_rope_base():
    r = load_recipe(RECIPES / "llama2_long/7b_32k.yaml")
    assert (r.model.rotary_base, r.train.seq_length, r.model.vocab_size, r.model.num_query_groups) == (5e5, 32768, 32000, 32)
    assert r.scheduler.lr_warmup_iters == 2000 and r.optimizer.lr == 2e-5


def test_overrides_apply_and_compose():
    r = load_recipe(TINY, ["train.train_iters=7", "model.rotary_base=1e6", "checkpoint.save=/x"])
    assert (r.train.train_iters, r.model.rotary_base, r.checkpoint.save) == (7, 1e6, "/x")
    assert r.model.hidden_size == 256  # from the tiny model base, over the 8B base
    assert r.logging.tensorboard_dir == "/x/tensorboard"  # interpolation follows the override


def _problems(*overrides, world_size=None):
    with pytest.raises(RecipeError) as e:
        load_recipe(TINY, list(overrides), world_size=world_size)
    return "\n".join(e.value.problems)


def test_misspelled_key_is_named_with_a_suggestion():
    msg = _problems("train.seq_lenght=1024")
    assert "train.seq_lenght" in msg and "seq_length" in msg


def test_wrong_type_is_named():
    assert "train.global_batch_size" in _problems("train.global_batch_size=lots")


def test_malformed_override_is_refused():
    assert "not of the form key=value" in _problems("train.seq_length")


@pytest.mark.parametrize("overrides, key", [
    (["train.seq_length=32768"], "train.seq_length"),                          # > max_position_embeddings
    (["model.num_query_groups=3"], "model.num_query_groups"),                  # 4 heads / 3 groups
    (["data.synthetic.vocab_size=200000"], "data.synthetic.vocab_size"),
    (["parallel.tensor_model_parallel_size=3"], "parallel.tensor_model_parallel_size"),
    (["parallel.cp_comm_type=ring"], "parallel.cp_comm_type"),
    (["parallel.pipeline_model_parallel_size=2"], "parallel.pipeline_model_parallel_size"),
    (["parallel.recompute_granularity=full"], "parallel.recompute_method"),
    (["optimizer.min_lr=1.0"], "optimizer.min_lr"),
    (["scheduler.lr_warmup_iters=10"], "scheduler.lr_warmup_fraction"),       # both set
    (["precision.fp8=e5m2"], "precision.fp8"),
    (["precision.fp8=e4m3", "precision.fp8_recipe=mxfp8"], "precision.fp8_recipe"),
    (["precision.fp8=e4m3", "train.device=cpu"], "precision.fp8"),
    (["checkpoint.save=null"], "checkpoint.save_interval"),
    (["checkpoint.pretrained_load_optim=true"], "checkpoint.pretrained_load_optim"),
    (["data.synthetic.single_document_fraction=1.5"], "data.synthetic.single_document_fraction"),
    (["train.device=tpu"], "train.device"),
    (["train.train_iters=1"], "scheduler.lr_warmup_fraction"),               # 1 warmup iteration of 1
])
def test_impossible_values_name_the_key(overrides, key):
    assert key in _problems(*overrides)


def test_context_parallel_divisibility():
    msg = _problems("parallel.context_parallel_size=3")
    assert "train.seq_length" in msg and "2 x context_parallel_size" in msg


def test_a2a_needs_heads_per_tp_rank_divisible_by_cp():
    # tiny model: 4 heads, 2 KV groups -> a2a over CP=4 cannot scatter 2 KV heads
    msg = _problems("parallel.context_parallel_size=4", "parallel.cp_comm_type=a2a")
    assert "parallel.cp_comm_type" in msg and "model.num_query_groups" in msg


def test_every_cp_comm_type_is_accepted_with_document_masking():
    # p2p trains with each document's padding counted as its tokens (batch.padding_joins_documents).
    for ok in (["parallel.cp_comm_type=p2p"], ["parallel.cp_comm_type=a2a"], ["parallel.cp_comm_type=all_gather"],
               ["parallel.cp_comm_type=a2a+p2p", "parallel.hierarchical_context_parallel_sizes=[1,2]"]):
        assert load_recipe(TINY, ["parallel.context_parallel_size=2", *ok]).parallel.cp_comm_type == ok[0].split("=")[1]


def test_gpus_must_divide_by_tp_times_cp():
    msg = _problems("model.num_query_groups=2", "parallel.tensor_model_parallel_size=2", world_size=3)
    assert "world size 3 (GPUs) is not divisible" in msg


def test_global_batch_must_divide_by_data_parallel():
    assert "train.global_batch_size" in _problems("train.global_batch_size=6", world_size=4)


def test_fp8_attention_refused_for_packed_documents():
    msg = _problems("precision.fp8=e4m3", "precision.fp8_dot_product_attention=true")
    assert "THD" in msg and "single document" in msg


def test_fp8_attention_allowed_for_single_document_samples_with_head_dim_128():
    r = load_recipe(TINY, ["precision.fp8=e4m3", "precision.fp8_dot_product_attention=true",
                           "model.kv_channels=128", "data.synthetic.single_document_fraction=1.0"])
    assert r.precision.fp8_dot_product_attention


def test_all_problems_are_reported_at_once():
    with pytest.raises(RecipeError) as e:
        load_recipe(TINY, ["optimizer.lr=-1", "train.device=tpu", "model.num_layers=0"])
    assert len(e.value.problems) >= 3


def test_vocab_padding_is_independent_of_tp():
    r = load_recipe(TINY, ["model.vocab_size=49152"])
    assert padded_vocab_size(r) == 49152
    assert padded_vocab_size(load_recipe(TINY, ["model.vocab_size=49153"])) == 49280


def test_base_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RecipeError, match="circular"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_multi_query_attention_with_packed_documents_is_refused_on_gpus():
    assert "model.num_query_groups: 1 (multi-query attention)" in _problems("model.num_query_groups=1")
    for allowed in (["data.synthetic.single_document_fraction=1.0"], ["train.reset_attention_mask=false"],
                    ["train.device=cpu", "precision.bf16=false"]):
        assert load_recipe(TINY, ["model.num_query_groups=1", *allowed]).model.num_query_groups == 1
