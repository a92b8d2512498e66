"""Recipes: every shipped one validates; bad input is refused with the key named."""

import ast
import dataclasses
import time
import typing
from pathlib import Path

import pytest

from megatron_ext.config import RecipeError, load_recipe, schema
from megatron_ext.config.bounds import CHECK
from megatron_ext.config.loader import find_recipe
from megatron_ext.config.validate import padded_vocab_size

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGES = sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name not in ("models", "hardware"))
TINY = RECIPES / "tiny" / "prolong_stage1.yaml"
STAGE1 = RECIPES / "prolong" / "stage1_64k.yaml"


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


def test_fp8_needs_a_multiple_of_16_tokens_per_rank():
    # 65,520 splits into whole sequence-parallel halves (all the old check asked), of 32,760 tokens
    with pytest.raises(RecipeError) as e:
        load_recipe("recipes/bench/llama3_8b_64k.yaml", ["precision.fp8=hybrid", "train.seq_length=65520"])
    msg = "\n".join(e.value.problems)
    assert "train.seq_length" in msg and "not a multiple of 32" in msg and "FP8 GEMMs" in msg, msg


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


def test_unknown_keys_wrong_types_and_bad_values_are_reported_together():
    # The README's example: a misspelled key and an impossible value, both reported.
    problems = _problems("train.seq_lenght=1024", "parallel.cp_comm_type=ring", "train.global_batch_size=lots",
                         "model.hidden_sise=8").splitlines()
    assert [p.split(":")[0] for p in problems] == [
        "train.seq_lenght", "train.global_batch_size", "model.hidden_sise", "parallel.cp_comm_type"]
    assert all(p.endswith("(command line)") for p in problems[:3])


# Malformed values found by outside checks (the first six looped for ever, trained wrong or
# created ./None/), then one per kind of check. Each must be refused with a one-line
# message that starts with its key.
MALFORMED = [
    (["data.synthetic.doc_length_max=-5"], "data.synthetic.doc_length_max"),
    (["scheduler.lr_warmup_init=-1"], "scheduler.lr_warmup_init"),
    (["scheduler.lr_warmup_init=0.5"], "scheduler.lr_warmup_init"),                # above optimizer.lr
    (["optimizer.clip_grad=nan"], "optimizer.clip_grad"),
    (["train.train_iters=99999999999999999999999"], "train.train_iters"),           # beyond int64
    (["checkpoint.save=None"], "checkpoint.save"),                                   # the string "None"
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay"),
    (["optimizer.adam_eps=0"], "optimizer.adam_eps"),
    (["optimizer.adam_beta2=1.0"], "optimizer.adam_beta2"),
    (["model.rotary_base=1e400"], "model.rotary_base"),                              # YAML reads inf
    (["model.norm_epsilon=-1e-5"], "model.norm_epsilon"),
    (["model.init_method_std=.nan"], "model.init_method_std"),
    (["model.hidden_size=0"], "model.hidden_size"),
    (["model.vocab_size=1000000000"], "model.vocab_size"),
    (["train.seed=-1"], "train.seed"),
    (["train.seq_length=-4096"], "train.seq_length"),
    (["train.train_iters=1000000000", "train.global_batch_size=1024"], "train.train_iters"),  # 1e12 samples
    (["train.exit_after_iters=0"], "train.exit_after_iters"),
    (["scheduler.lr_warmup_fraction=-0.1"], "scheduler.lr_warmup_fraction"),
    (["scheduler.lr_decay_iters=0"], "scheduler.lr_decay_iters"),
    (["scheduler.lr_decay_style=step"], "scheduler.lr_decay_style"),
    (["parallel.hierarchical_context_parallel_sizes=[0,2]"], "parallel.hierarchical_context_parallel_sizes[0]"),
    (["parallel.recompute_granularity=everything"], "parallel.recompute_granularity"),
    (["precision.fp8_amax_history_len=0"], "precision.fp8_amax_history_len"),
    (["precision.fp8_amax_compute_algo=mean"], "precision.fp8_amax_compute_algo"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
    (["checkpoint.save_interval=-50"], "checkpoint.save_interval"),
    (["logging.log_interval=0"], "logging.log_interval"),
    (["logging.peak_tflops=-989"], "logging.peak_tflops"),
    (["logging.metrics_jsonl=''"], "logging.metrics_jsonl"),
    (["data.num_workers=100000"], "data.num_workers"),
    (["data.synthetic.doc_length_sigma=nan"], "data.synthetic.doc_length_sigma"),
    (["data.synthetic.doc_length_median=8"], "data.synthetic.doc_length_median"),    # below doc_length_min 16
    (["data.synthetic.doc_length_max=100"], "data.synthetic.doc_length_median"),     # median 256 above max
    (["data.synthetic.num_domains=1000000000"], "data.synthetic.num_domains"),
    (["data.synthetic.period=100000"], "data.synthetic.period"),                     # longer than a sequence
    (["data.synthetic.num_samples=0"], "data.synthetic.num_samples"),
    (["name=''"], "name"),
]


@pytest.mark.parametrize("overrides, key", MALFORMED, ids=[" ".join(o) for o, _ in MALFORMED])
def test_malformed_values_are_refused_naming_the_key(overrides, key):
    with pytest.raises(RecipeError) as e:
        load_recipe(TINY, overrides)
    assert any(p.startswith(f"{key}: ") for p in e.value.problems), e.value.problems
    assert all("\n" not in p for p in e.value.problems)


def _annotation_kinds(annotation) -> set:
    """The scalar types inside Optional[...] / List[...]."""
    args = typing.get_args(annotation)
    return set().union(*(_annotation_kinds(a) for a in args)) if args else {annotation}


def _schema_fields():
    for cls in vars(schema).values():
        if dataclasses.is_dataclass(cls) and cls.__module__ == schema.__name__:
            hints = typing.get_type_hints(cls)
            yield from ((cls, f, _annotation_kinds(hints[f.name])) for f in dataclasses.fields(cls))


def test_every_schema_field_declares_its_check():
    # A field added without number(...) / one_of(...) / text(...) fails here, so that no
    # numeric or text key goes unchecked (ints also need an upper bound: no int64 overflow).
    undeclared = [f"{cls.__name__}.{f.name}" for cls, f, kinds in _schema_fields()
                  if kinds & {int, float, str} and CHECK not in f.metadata]
    assert not undeclared, f"declare a check for: {undeclared}"
    unbounded = [f"{cls.__name__}.{f.name}" for cls, f, kinds in _schema_fields()
                 if int in kinds and CHECK in f.metadata and f.metadata[CHECK].le is None]
    assert not unbounded, f"give an upper bound (le=) to: {unbounded}"


def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    start = time.time()
    with pytest.raises(RecipeError, match=r"bomb.yaml, line 1: .*expansion exceeds") as e:
        load_recipe(bomb)
    assert time.time() - start < 2 and len(e.value.problems) == 1


def test_duplicate_yaml_key_is_refused_with_file_and_line(tmp_path):
    (tmp_path / "dup.yaml").write_text(f"base: {TINY}\ntrain:\n  seq_length: 1024\n  seq_length: 2048\n")
    with pytest.raises(RecipeError, match=r"dup.yaml, line 4: .*duplicate key seq_length"):
        load_recipe(tmp_path / "dup.yaml")


def test_mistakes_in_every_file_name_their_file(tmp_path):
    (tmp_path / "base.yaml").write_text(f"base: {TINY}\nmodel:\n  num_layerz: 4\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\noptimizer:\n  lrr: 1.0\n  clip_grad: high\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "top.yaml", ["train.seq_lenght=8"])
    sources = [p.rsplit("(", 1)[1] for p in e.value.problems]
    assert [p.split(":")[0] for p in e.value.problems] == [
        "model.num_layerz", "optimizer.lrr", "optimizer.clip_grad", "train.seq_lenght"]
    assert [s.rstrip(")").rsplit("/", 1)[-1] for s in sources] == ["base.yaml", "top.yaml", "top.yaml", "command line"]


def test_every_bad_domain_entry_is_reported():
    with pytest.raises(RecipeError) as e:
        load_recipe(STAGE1, ["data.domains=[{nam: a, share: 1.0, paths: [x]}, {name: b, sharee: 0}]"])
    assert {p.split(":")[0] for p in e.value.problems} >= {"data.domains[0].nam", "data.domains[1].sharee"}


def test_list_element_overrides():
    r = load_recipe(STAGE1, ["data.domains.1.max_epochs=4.5", "data.domains[2].packing=long"])
    assert (r.data.domains[1].max_epochs, r.data.domains[2].packing) == (4.5, "long")
    assert [d.max_epochs for i, d in enumerate(r.data.domains) if i != 1] == [1.0] * 9
    with pytest.raises(RecipeError, match="data.domains: shares must sum to 1, got 1.200000"):
        load_recipe(STAGE1, ["data.domains.0.share=0.5"])
    with pytest.raises(RecipeError, match=r"data.domains.10: no such entry, the list has 10 \(command line\)"):
        load_recipe(STAGE1, ["data.domains.10.share=0.5"])


def test_key_below_a_null_section_fills_it_from_its_defaults():
    r = load_recipe(STAGE1, ["data.domains=[]", "data.synthetic.period=8"])
    assert r.data.synthetic.period == 8 and r.data.synthetic.doc_length_median == 1024


@pytest.mark.parametrize("path", [STAGE1, RECIPES / "llama2_long/7b_32k.yaml"], ids=lambda p: p.name)
def test_a_path_built_from_a_null_path_is_null(path):
    # logging.tensorboard_dir: ${checkpoint.save}/tensorboard must not become "None/tensorboard".
    r = load_recipe(path, ["checkpoint.save=null", "checkpoint.save_interval=null"])
    assert r.checkpoint.save is None and r.logging.tensorboard_dir is None
    assert load_recipe(path, ["checkpoint.save=/ck"]).logging.tensorboard_dir == "/ck/tensorboard"


@pytest.mark.parametrize("value", ["${checkpoint.sav}", "${checkpoint.sav}/tensorboard"])
def test_broken_interpolation_names_the_key(value):
    msg = _problems(f"logging.tensorboard_dir={value}")
    assert msg.startswith(f"logging.tensorboard_dir: cannot resolve '{value}'")


def test_packaged_recipes_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("tiny/prolong_stage1.yaml", "recipes/tiny/prolong_stage1.yaml"):
        assert find_recipe(name).resolve() == TINY.resolve()
        assert load_recipe(name).name == "tiny-prolong-stage1"
    with pytest.raises(RecipeError, match="recipe file not found: tiny/nope.yaml .nor among the packaged recipes"):
        load_recipe("tiny/nope.yaml")


def test_config_modules_import_no_cycle():
    # loader.py and validate.py used to import each other.
    config = Path(schema.__file__).parent
    imports = {p.stem: {n.module.rsplit(".", 1)[-1] for n in ast.walk(ast.parse(p.read_text()))
                        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("megatron_ext.config.")}
               for p in config.glob("*.py")}

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, seen + (m,))) for m in imports.get(start, ()))

    assert not [m for m in imports if reaches(m, m)]


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


def test_micro_batches_past_the_fused_rope_kernels_offsets_are_refused():
    """512K tokens of the Llama-3-8B shape on one GPU gave wrong outputs and crashed with the fused
    RoPE kernel, 256K were exact (reports/performance.md): refused, naming the key and the way out."""
    stage2 = "recipes/bench/llama3_8b_512k.yaml"
    for data in ([], ["data.synthetic.single_document_fraction=1.0"], ["train.reset_attention_mask=false"]):
        with pytest.raises(RecipeError) as e:
            load_recipe(stage2, ["parallel.context_parallel_size=1", *data])
        assert len(e.value.problems) == 1 and e.value.problems[0].startswith("train.seq_length:")
        assert "524,288 tokens per GPU" in e.value.problems[0] and "349,525" in e.value.problems[0]
        assert "model.apply_rope_fusion=false" in e.value.problems[0]
    half = ["train.seq_length=262144", "model.max_position_embeddings=262144"]
    with pytest.raises(RecipeError, match="524,288 tokens per GPU"):  # micro-batches of two samples
        load_recipe(stage2, ["parallel.context_parallel_size=1", *half, "train.micro_batch_size=2"])
    for allowed in (["parallel.context_parallel_size=2"], ["parallel.tensor_model_parallel_size=2"], half,
                    ["model.apply_rope_fusion=false"], ["train.device=cpu", "precision.bf16=false"]):
        load_recipe(stage2, ["parallel.context_parallel_size=1", *allowed])
