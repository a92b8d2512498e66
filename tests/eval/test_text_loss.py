"""Held-out text loss (tools/eval.py --loss-data): token-averaged, padding-independent."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_ext.eval.text_loss import read_documents, text_loss

DOCS = ["The quick brown fox jumps over the lazy dog.", "Return the value of the named attribute of object.",
        "A much longer document about nothing in particular. " * 12, "Hi there"]


@pytest.fixture(scope="module")
def model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def test_loss_is_the_token_average_over_all_documents(model, tiny_tokenizer, monkeypatch):
    total, count = 0.0, 0
    for doc in DOCS:  # reference: transformers' own loss, one unpadded document at a time
        ids = torch.tensor([tiny_tokenizer(doc)["input_ids"]])
        n = ids.shape[1] - 1
        total += float(model(input_ids=ids, labels=ids).loss) * n
        count += n
    result = text_loss(model, tiny_tokenizer, DOCS)
    assert result["tokens"] == count and result["documents"] == len(DOCS)
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    for budget in (1, 40):  # one document a pass; a few padded to the longest of their batch
        assert text_loss(model, tiny_tokenizer, DOCS, batch_tokens=budget)["loss"] == pytest.approx(result["loss"], rel=1e-5)
    monkeypatch.setattr("megatron_ext.eval.text_loss.FLOAT32_ROWS", 3)  # the loss summed over float32 slices
    assert text_loss(model, tiny_tokenizer, DOCS)["loss"] == pytest.approx(result["loss"], rel=1e-5)
    monkeypatch.setattr("megatron_ext.eval.text_loss.TOKENIZE_DOCUMENTS", 3)  # tokenized a few at a time
    assert text_loss(model, tiny_tokenizer, DOCS)["loss"] == pytest.approx(result["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="no document of 2 or more tokens"):
        text_loss(model, tiny_tokenizer, [])


def test_short_documents_share_forward_passes(model, tiny_tokenizer):
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                       with_kwargs=True)
    try:
        docs = [f"Fortune number {i}: a short saying." for i in range(40)] + [DOCS[2]]
        result = text_loss(model, tiny_tokenizer, docs, batch_tokens=1024)
    finally:
        hook.remove()
    assert result["documents"] == len(docs)
    assert sum(rows for rows, _ in calls) == len(docs) and len(calls) <= 2  # not 40 / 8 = 6 passes
    assert all(rows * width <= 1024 for rows, width in calls)


def test_documents_are_cut_to_max_tokens(model, tiny_tokenizer):
    expected = sum(min(len(tiny_tokenizer(d)["input_ids"]), 5) - 1 for d in DOCS)
    assert any(len(tiny_tokenizer(d)["input_ids"]) > 5 for d in DOCS)
    assert text_loss(model, tiny_tokenizer, DOCS, max_tokens=5)["tokens"] == expected


def test_read_documents_names_the_bad_line(tmp_path):
    good = tmp_path / "held.jsonl"
    good.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert read_documents(good) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"body": "two"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: no string 'text' field"):
        read_documents(bad)
    (tmp_path / "numbers.jsonl").write_text(json.dumps({"text": 17}) + "\n")  # not a string: refused, not a crash
    with pytest.raises(ValueError, match=r"numbers.jsonl:1: no string 'text' field"):
        read_documents(tmp_path / "numbers.jsonl")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="x.csv: cannot tell the format"):
        read_documents(tmp_path / "x.csv")


def test_read_documents_reads_what_data_preparation_reads(tmp_path):
    import gzip

    with gzip.open(tmp_path / "held.jsonl.gz", "wt") as f:
        f.write("\ufeff" + json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    assert read_documents(tmp_path / "held.jsonl.gz") == ["first", "second"]  # compressed, byte-order mark


def test_eval_tool_reports_loss(tiny_llama, tmp_path):
    from eval_helpers import load_tool

    from megatron_ext.eval.results import EvalRun

    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "out"
    rc = load_tool("eval").main([str(tiny_llama), "--out", str(out), "--lengths", "512", "--samples", "2",
                                 "--tasks", "local_niah_single", "--backend", "native", "--device", "cpu",
                                 "--short-tasks", "none", "--loss-data", str(held)])
    assert rc == 0
    run = EvalRun.load(out)
    assert set(run.text_loss) == {"held_out"} and run.text_loss["held_out"]["documents"] == len(DOCS)
    assert "Held-out text loss" in (out / "results.md").read_text()


def test_loss_only_evaluation(tiny_llama, tmp_path):
    from eval_helpers import load_tool

    from megatron_ext.eval.results import EvalRun

    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "out"
    tool = load_tool("eval")
    assert tool.main([str(tiny_llama), "--out", str(out), "--lengths", "none", "--device", "cpu", "--backend", "native",
                      "--short-tasks", "none", "--loss-data", str(held)]) == 0
    run = EvalRun.load(out)
    assert run.scores == {} and run.text_loss["held_out"]["documents"] == len(DOCS)
    assert tool.main([str(tiny_llama), "--out", str(tmp_path / "none"), "--lengths", "none", "--device", "cpu",
                      "--backend", "native", "--short-tasks", "none"]) == 2
    assert tool.main([str(tiny_llama), "--out", str(tmp_path / "zero"), "--lengths", "none", "--device", "cpu",
                      "--backend", "native", "--short-tasks", "none", "--loss-data", str(held), "--loss-limit", "0"]) == 2
