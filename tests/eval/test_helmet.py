"""HELMET adapter: configs and data in HELMET's formats, and the eval.py contract (against a
stand-in checkout that records what it was asked to run)."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from megatron_ext.eval import helmet
from megatron_ext.eval.recall_data import DataSettings

# Options HELMET's arguments.py accepts (a config key it does not know would be ignored silently).
HELMET_OPTIONS = {
    "config", "tag", "model_name_or_path", "datasets", "demo_files", "test_files", "output_dir", "overwrite",
    "max_test_samples", "shots", "input_max_length", "do_sample", "generation_max_length", "generation_min_length",
    "temperature", "top_p", "stop_newline", "system_message", "seed", "use_chat_template", "rope_theta",
}

STAND_IN_EVAL = textwrap.dedent(
    """
    import argparse, json, os, yaml
    p = argparse.ArgumentParser()
    for a in ("--config", "--model_name_or_path", "--output_dir", "--tag"):
        p.add_argument(a)
    args = p.parse_args()
    cfg = yaml.safe_load(open(args.config))
    os.makedirs(args.output_dir, exist_ok=True)
    lists = [cfg[k].split(",") for k in ("datasets", "test_files", "input_max_length", "generation_max_length")]
    for i, (dataset, test_file, length, gen) in enumerate(zip(*lists)):
        if dataset == "json_kv" and i > 0:
            continue  # leaves one configured run without a score
        rows = [json.loads(l) for l in open(test_file)]
        stem = os.path.splitext(os.path.basename(test_file))[0]
        name = f"{dataset}_{args.tag}_{stem}_in{length}_size{cfg['max_test_samples']}_shots{cfg['shots']}_sampFalsemax{gen}min0t0.0p1.0_chat{cfg['use_chat_template']}_42.json"
        metric = "substring_exact_match" if dataset == "json_kv" else "ruler_recall"
        json.dump({metric: 10.0 * len(rows), "rougeL_f1": 1.0}, open(os.path.join(args.output_dir, name + ".score"), "w"))
    """
)


def test_official_recall_config_uses_only_present_files(tmp_path):
    (tmp_path / "data/ruler/niah_multikey_2").mkdir(parents=True)
    (tmp_path / "data/ruler/niah_multikey_2/validation_8192.jsonl").write_text("{}\n")
    (tmp_path / "data/json_kv").mkdir(parents=True)
    (tmp_path / "data/json_kv/test_k105_dep6.jsonl").write_text("{}\n")
    config, skipped = helmet.official_recall_config(tmp_path, "/models/x", [8192, 12288], 50, False)
    assert list(zip(config.datasets, config.input_max_length)) == [("ruler_niah_mk_2", 8192), ("json_kv", 8192)]
    assert config.test_files == ["data/ruler/niah_multikey_2/validation_8192.jsonl", "data/json_kv/test_k105_dep6.jsonl"]
    assert "download_data.sh" in skipped["helmet ruler_niah_mv @ 8192"]
    assert "only for lengths" in skipped["helmet json_kv @ 12288"]


def test_config_yaml_is_what_helmet_parses(tmp_path):
    config = helmet.HelmetConfig("/models/x", max_test_samples=7)
    config.add("json_kv", "a.jsonl", 8192, 100)
    config.add("ruler_niah_mk_2", "b.jsonl", 16384, 50)
    parsed = yaml.safe_load(config.as_yaml())
    assert set(parsed) <= HELMET_OPTIONS
    lists = {k: str(parsed[k]).split(",") for k in ("datasets", "test_files", "input_max_length", "generation_max_length", "demo_files")}
    assert {len(v) for v in lists.values()} == {2}
    assert lists["input_max_length"] == ["8192", "16384"] and parsed["max_test_samples"] == 7


def test_local_data_in_helmet_formats(tiny_tokenizer, tmp_path):
    data = DataSettings(num_samples=4, depths=(0.0, 100.0))
    config = helmet.write_local_data(tmp_path, tiny_tokenizer, "/models/x", ["json_kv", "local_niah_multikey"], [1024], data, 3, False)
    assert config.datasets == ["json_kv", "ruler_niah_local_multikey"]
    kv_rows = [json.loads(line) for line in Path(config.test_files[0]).read_text().splitlines()]
    assert len(kv_rows) == 3
    for row in kv_rows:
        pairs = json.loads(row["context"].removeprefix("JSON data:\n"))
        assert pairs[json.loads(row["question"])] == row["answer"]
        assert len(row["demos"]) == 2 and row["num_kvs"] == len(pairs)
    for row in map(json.loads, Path(config.test_files[1]).read_text().splitlines()):
        assert set(row) == {"context", "query", "outputs", "type_needle_v"}
        assert f"for {row['query']} is: {row['outputs'][0]}." in row["context"]


def test_run_and_collect_scores_with_a_stand_in_checkout(tiny_tokenizer, tmp_path):
    checkout = tmp_path / "HELMET"
    checkout.mkdir()
    with pytest.raises(FileNotFoundError, match="not a HELMET checkout"):
        helmet.run_helmet(checkout, tmp_path / "c.yaml", "/models/x", tmp_path / "out")
    (checkout / "eval.py").write_text(STAND_IN_EVAL)
    config = helmet.write_local_data(tmp_path / "h", tiny_tokenizer, "/models/x", ["local_niah_single", "json_kv"], [768, 1024], DataSettings(num_samples=2), 2, False)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.as_yaml())
    helmet.run_helmet(checkout, config_path, "/models/x", tmp_path / "out")
    scores, missing = helmet.collect_scores(tmp_path / "out", config)
    assert scores == {"ruler_niah_local_single": {768: 20.0, 1024: 20.0}}
    assert set(missing) == {"helmet json_kv @ 768", "helmet json_kv @ 1024"}

    (checkout / "eval.py").write_text("raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="exit 3"):
        helmet.run_helmet(checkout, config_path, "/models/x", tmp_path / "out")
