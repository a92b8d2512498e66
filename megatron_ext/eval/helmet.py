"""Adapter to HELMET (princeton-nlp/HELMET, a git checkout; not on PyPI): writes its config
and data, runs its own eval.py, and reads back its scores.

Two sources of data:
- "official": HELMET's recall category on the data its scripts/download_data.sh fetches
  (RULER MK-needle, MK-UUID, MV and JSON KV at 8K-128K); missing files are skipped.
- "local": our locally generated json_kv and needle tasks written in HELMET's formats, so
  HELMET's own prompting and scoring can run with no download at any length.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_ext.eval.recall_data import RECALL_TASKS, DataSettings, generate_docs

# HELMET recall datasets: data file pattern (under the checkout) and generation budget.
OFFICIAL_RECALL = {
    "ruler_niah_mk_2": ("data/ruler/niah_multikey_2/validation_{length}.jsonl", 50),
    "ruler_niah_mk_3": ("data/ruler/niah_multikey_3/validation_{length}.jsonl", 100),
    "ruler_niah_mv": ("data/ruler/niah_multivalue/validation_{length}.jsonl", 50),
    "json_kv": ("data/json_kv/test_k{pairs}_dep6.jsonl", 100),
}
# Key-value pairs per JSON KV file, by input length (HELMET's released files).
JSON_KV_PAIRS = {8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}
# HELMET datasets for our local tasks; a name containing "niah" selects its needle template.
LOCAL_DATASETS = {"local_niah_single": "ruler_niah_local_single", "local_niah_multikey": "ruler_niah_local_multikey", "local_niah_uuid": "ruler_niah_local_uuid", "json_kv": "json_kv"}
# HELMET's prompt wraps our context a little differently: leave it this much room.
PROMPT_HEADROOM = 64
TAG = "megatron_ext"


@dataclass
class HelmetConfig:
    """One HELMET --config file: parallel comma-separated lists, one entry per (dataset, length)."""

    model_name_or_path: str
    datasets: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    input_max_length: list[int] = field(default_factory=list)
    generation_max_length: list[int] = field(default_factory=list)
    max_test_samples: int = 100
    shots: int = 2
    use_chat_template: bool = False

    def add(self, dataset: str, test_file: str, length: int, generation: int) -> None:
        self.datasets.append(dataset)
        self.test_files.append(test_file)
        self.input_max_length.append(length)
        self.generation_max_length.append(generation)

    def as_yaml(self) -> str:
        return yaml.safe_dump(
            {
                "input_max_length": ",".join(map(str, self.input_max_length)),
                "datasets": ",".join(self.datasets),
                "generation_max_length": ",".join(map(str, self.generation_max_length)),
                "test_files": ",".join(self.test_files),
                "demo_files": ",".join([""] * len(self.datasets)),
                "use_chat_template": self.use_chat_template,
                "max_test_samples": self.max_test_samples,
                "shots": self.shots,
                "stop_newline": False,
                "model_name_or_path": self.model_name_or_path,
            },
            sort_keys=False,
        )


def official_recall_config(helmet_dir: Path, model: str, lengths: list[int], max_test_samples: int, use_chat_template: bool) -> tuple[HelmetConfig, dict[str, str]]:
    config = HelmetConfig(model, max_test_samples=max_test_samples, use_chat_template=use_chat_template)
    skipped = {}
    for dataset, (pattern, generation) in OFFICIAL_RECALL.items():
        for length in lengths:
            if dataset == "json_kv" and length not in JSON_KV_PAIRS:
                skipped[f"helmet {dataset} @ {length}"] = f"HELMET ships JSON KV data only for lengths {sorted(JSON_KV_PAIRS)}"
                continue
            relative = pattern.format(length=length, pairs=JSON_KV_PAIRS.get(length))
            if not (helmet_dir / relative).is_file():
                skipped[f"helmet {dataset} @ {length}"] = f"{helmet_dir / relative} not found (run HELMET's scripts/download_data.sh)"
                continue
            config.add(dataset, relative, length, generation)
    return config, skipped


def helmet_record(doc: dict, rng_demos: list[tuple[str, str]]) -> dict:
    """Our document in the fields HELMET's loaders read."""
    if doc["task"] == "json_kv":
        return {
            "context": "JSON data:\n" + doc["context"],
            "question": json.dumps(doc["query"]),
            "answer": doc["outputs"][0],
            "demos": [[json.dumps(k), v] for k, v in rng_demos],
            "num_kvs": doc["num_kvs"],
        }
    return {"context": doc["context"], "query": doc["query"], "outputs": doc["outputs"], "type_needle_v": RECALL_TASKS[doc["task"]].value_kind}


def write_local_data(out_dir: Path, tokenizer, model: str, tasks: list[str], lengths: list[int], data: DataSettings, max_test_samples: int, use_chat_template: bool) -> HelmetConfig:
    """Our documents as HELMET jsonl files plus the config that runs them."""
    import random

    from megatron_ext.eval.recall_data import random_value

    config = HelmetConfig(model, max_test_samples=max_test_samples, use_chat_template=use_chat_template)
    rng = random.Random(data.seed)
    for task in tasks:
        for length in lengths:
            docs = generate_docs(task, tokenizer, length - PROMPT_HEADROOM, data)[:max_test_samples]
            path = out_dir / "data" / task / f"test_{length}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            demos = [(random_value(rng, "uuid"), random_value(rng, "uuid")) for _ in range(config.shots)]
            path.write_text("".join(json.dumps(helmet_record(d, demos)) + "\n" for d in docs))
            config.add(LOCAL_DATASETS[task], str(path.resolve()), length, RECALL_TASKS[task].max_gen_toks)
    return config


def run_helmet(helmet_dir: Path, config_path: Path, model: str, output_dir: Path, python: str = sys.executable) -> None:
    if not (helmet_dir / "eval.py").is_file():
        raise FileNotFoundError(f"{helmet_dir} is not a HELMET checkout (no eval.py); clone princeton-nlp/HELMET")
    command = [python, "eval.py", "--config", str(config_path.resolve()), "--model_name_or_path", model, "--output_dir", str(output_dir.resolve()), "--tag", TAG]
    result = subprocess.run(command, cwd=helmet_dir, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"HELMET's eval.py failed (exit {result.returncode}): {' '.join(command)}")


def collect_scores(output_dir: Path, config: HelmetConfig) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """HELMET writes <dataset>_<tag>_<test file>_in<length>_...json.score per run: read the
    main metric of each, and say which configured runs left no score."""
    scores: dict[str, dict[int, float]] = {}
    missing = {}
    for dataset, test_file, length in zip(config.datasets, config.test_files, config.input_max_length):
        stem = Path(test_file).stem
        pattern = re.compile(re.escape(f"{dataset}_{TAG}_{stem}_in{length}_") + r".*\.json\.score$")
        found = [p for p in output_dir.glob("*.score") if pattern.match(p.name)]
        if not found:
            missing[f"helmet {dataset} @ {length}"] = "HELMET produced no score file (see its log above)"
            continue
        metrics = json.loads(found[0].read_text())
        metric = next((m for m in ("ruler_recall", "substring_exact_match") if m in metrics), next(iter(metrics)))
        scores.setdefault(dataset, {})[length] = float(metrics[metric])
    return scores, missing
