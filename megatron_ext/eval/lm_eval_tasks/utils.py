"""lm-eval glue for the local recall tasks: data from recall_data, scores from scoring."""

from __future__ import annotations

from functools import cache, partial

import datasets
from transformers import AutoTokenizer

from megatron_ext.eval.recall_data import DEFAULT_DEPTHS, DataSettings, generate_docs
from megatron_ext.eval.scoring import recall_score

TOKENIZER_KEYS = ("tokenizer", "pretrained")


@cache
def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(name)


def build_dataset(task_name: str, **metadata) -> dict[str, datasets.Dataset]:
    name = next((metadata[k] for k in TOKENIZER_KEYS if isinstance(metadata.get(k), str) and metadata[k]), None)
    if name is None:
        raise ValueError(f"{task_name} sizes its documents in tokens: pass the tokenizer via metadata, e.g. --metadata '{{\"tokenizer\": \"/path/to/checkpoint\"}}'")
    settings = DataSettings(
        num_samples=int(metadata.get("num_samples", DataSettings.num_samples)),
        depths=tuple(float(d) for d in metadata.get("depths", DEFAULT_DEPTHS)),
        seed=int(metadata.get("data_seed", 0)),
        haystack=str(metadata.get("haystack", DataSettings.haystack)),
    )
    tokenizer = load_tokenizer(name)
    docs = [doc for length in metadata.get("max_seq_lengths", [4096]) for doc in generate_docs(task_name, tokenizer, int(length), settings)]
    return {"test": datasets.Dataset.from_list(docs)}


local_niah_single = partial(build_dataset, "local_niah_single")
local_niah_multikey = partial(build_dataset, "local_niah_multikey")
local_niah_uuid = partial(build_dataset, "local_niah_uuid")
json_kv = partial(build_dataset, "json_kv")


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    # Only the document's own length: no placeholders for the others to filter out later.
    return {str(doc["max_length"]): recall_score(results[0], doc["outputs"])}
