import json
import re

import pytest

from megatron_ext.eval.haystack import Haystack, split_sentences
from megatron_ext.eval.recall_data import RECALL_TASKS, DataSettings, DoesNotFit, generate_docs, join_prompt

DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
SETTINGS = DataSettings(num_samples=10, depths=DEPTHS, seed=3)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


@pytest.mark.parametrize("task", ["local_niah_single", "local_niah_multikey", "local_niah_uuid"])
def test_needle_sits_at_the_stated_depth(tiny_tokenizer, task):
    docs = generate_docs(task, tiny_tokenizer, 1024, SETTINGS)
    assert [d["depth"] for d in docs] == list(DEPTHS) * 2
    for doc in docs:
        value = doc["outputs"][0]
        needle = f"The special magic {RECALL_TASKS[task].value_kind} for {doc['query']} is: {value}."
        assert doc["input"].count(needle) == 1
        assert doc["input"].index(needle) == doc["needle_offset"]
        context = doc["context"]
        before = context[: context.index(needle)]
        measured = 100 * (n_tokens(tiny_tokenizer, before) - 1) / (n_tokens(tiny_tokenizer, context) - 1)
        # Needles go between sentences: within one sentence (<= ~150 tokens here) of the target.
        assert abs(measured - doc["depth"]) < 15, (doc["depth"], measured)
    # Middle depths really are in the middle, not just within tolerance of the ends.
    middle = next(d for d in docs if d["depth"] == 50.0)
    assert 0.3 < middle["context"].index(middle["outputs"][0]) / len(middle["context"]) < 0.7


@pytest.mark.parametrize("task", sorted(RECALL_TASKS))
@pytest.mark.parametrize("length", [512, 1536])
def test_documents_fill_but_never_exceed_the_length(tiny_tokenizer, task, length):
    gen = RECALL_TASKS[task].max_gen_toks
    for doc in generate_docs(task, tiny_tokenizer, length, SETTINGS):
        used = n_tokens(tiny_tokenizer, join_prompt(doc["input"], doc["gen_prefix"])) + gen
        assert used == doc["length"] <= length
        # Short of the budget by at most about one haystack sentence (<= 400 chars) or JSON pair.
        assert used > length - 180, f"{task} wastes the budget: {used} of {length}"
        assert doc["max_length"] == length


def test_multikey_asks_for_one_of_four_distinct_needles(tiny_tokenizer):
    for doc in generate_docs("local_niah_multikey", tiny_tokenizer, 1024, SETTINGS):
        needles = re.findall(r"The special magic number for ([\w-]+) is: (\d+)\.", doc["input"])
        assert len(needles) == 4 and len({k for k, _ in needles}) == 4
        assert dict(needles)[doc["query"]] == doc["outputs"][0]
        assert f"for {doc['query']} mentioned in the text above" in doc["input"]


def test_json_kv_key_maps_to_answer_at_depth(tiny_tokenizer):
    for doc in generate_docs("json_kv", tiny_tokenizer, 1536, SETTINGS):
        data = json.loads(doc["input"].split("JSON data:\n", 1)[1].split("\n\nKey:", 1)[0])
        keys = list(data)
        assert data[doc["query"]] == doc["outputs"][0]
        assert len(keys) == doc["num_kvs"] > 10
        assert keys.index(doc["query"]) == round(doc["depth"] / 100 * (len(keys) - 1))
        assert doc["input"].endswith(f'Key: "{doc["query"]}"')


def test_generation_is_deterministic_per_seed(tiny_tokenizer):
    a = generate_docs("local_niah_single", tiny_tokenizer, 512, SETTINGS)
    b = generate_docs("local_niah_single", tiny_tokenizer, 512, SETTINGS)
    c = generate_docs("local_niah_single", tiny_tokenizer, 512, DataSettings(num_samples=10, depths=DEPTHS, seed=4))
    assert a == b
    assert [d["outputs"] for d in a] != [d["outputs"] for d in c]


def test_haystack_source_is_pluggable(tiny_tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Zebras graze quietly on the plain. " * 200)
    docs = generate_docs("local_niah_single", tiny_tokenizer, 512, DataSettings(num_samples=2, haystack=str(corpus)))
    assert "Zebras graze quietly" in docs[0]["input"]
    assert "Zebras" not in generate_docs("local_niah_single", tiny_tokenizer, 512, SETTINGS)[0]["input"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        Haystack(tmp_path / "empty", tiny_tokenizer)
    with pytest.raises(FileNotFoundError, match="neither 'stdlib' nor"):
        Haystack(tmp_path / "missing.txt", tiny_tokenizer)


def test_too_short_length_says_so(tiny_tokenizer):
    with pytest.raises(DoesNotFit, match="no room"):
        generate_docs("local_niah_single", tiny_tokenizer, 96, SETTINGS)
    with pytest.raises(DoesNotFit, match="too short"):
        generate_docs("json_kv", tiny_tokenizer, 96, SETTINGS)


def test_split_sentences_cuts_long_runs():
    sentences = split_sentences("First one. Second one!\n\n" + "x " * 500)
    assert sentences[:2] == ["First one.", "Second one!"]
    assert all(len(s) <= 400 for s in sentences) and len(sentences) > 3


def test_join_prompt_matches_lm_eval_delimiter_rule():
    assert join_prompt("Question?", "Answer:") == "Question? Answer:"
    assert join_prompt("Question?\n", "Answer:") == "Question?\nAnswer:"
