"""Prepare a domain: text -> dataset -> tokens, length filters, code repositories, bad input."""

from __future__ import annotations

import json

import pytest
from data_helpers import load_tool

from megatron_ext.data.indexed import PreparedDataset
from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare
from megatron_ext.data.sources import REPLACED_UTF8, InputError, SourceConfig

TEXTS = ["The quick brown fox.", "Naïve café — 東京 🚀 <|eot_id|> stays text", "def f(x):\n    return x ** 2\n"]


def _prepare(inputs, outputs, **kw):
    """prepare() with llama3; keyword arguments go to SourceConfig or PrepareConfig by name."""
    source_kw = {k: kw.pop(k) for k in list(kw) if k in SourceConfig.__dataclass_fields__}
    source = SourceConfig(inputs=[str(i) for i in inputs], **source_kw)
    return prepare(PrepareConfig(source=source, tokenizer="llama3", outputs=outputs, progress=False, **kw))


def _docs(prefix):
    ds = PreparedDataset(prefix)
    return [ds.read(i, 0, int(n))[0] for i, n in enumerate(ds.doc_lengths)]


def test_round_trip_text_to_dataset_to_tokens(tmp_path, llama3):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    report = _prepare([src], [OutputSpec(str(tmp_path / "out"))])
    docs = _docs(str(tmp_path / "out"))
    assert [llama3.decode(d[1:-1]) for d in docs] == TEXTS
    assert all(d[0] == llama3.bos_id and d[-1] == llama3.eos_id for d in docs)
    assert [len(d) for d in docs] == [len(llama3.encode(t)) + 2 for t in TEXTS]
    meta = PreparedDataset(str(tmp_path / "out")).meta
    assert meta["documents"] == 3 and meta["tokens"] == sum(map(len, docs)) == report.tokens_tokenized
    assert meta["tokenizer"]["vocab_size"] == 128256 and meta["max_token_id"] == llama3.eos_id


def test_bos_eos_options_parquet_and_text_separator(tmp_path, llama3):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": TEXTS}), tmp_path / "in.parquet")
    _prepare([tmp_path / "in.parquet"], [OutputSpec(str(tmp_path / "pq"))], text_key="body", add_bos=False, add_eos=False)
    assert [llama3.decode(d) for d in _docs(str(tmp_path / "pq"))] == TEXTS
    (tmp_path / "fortunes").write_text("one\nfortune\n%\ntwo\n%\n%\nthree\n")
    _prepare([tmp_path / "fortunes"], [OutputSpec(str(tmp_path / "txt"))], input_format="text",
             document_separator="%", add_bos=False, add_eos=True)
    assert [llama3.decode(d) for d in _docs(str(tmp_path / "txt"))] == [
        "one\nfortune\n<|end_of_text|>", "two\n<|end_of_text|>", "three\n<|end_of_text|>"]


def test_length_filters_and_buckets_in_one_pass(tmp_path, llama3):
    words = [n for n in (3, 10, 40, 200, 1000)]  # "a a a ..." is one token per word
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(["a"] * n)}) + "\n" for n in words))
    lengths = [len(llama3.encode(" ".join(["a"] * n))) + 2 for n in words]
    outputs = [OutputSpec(str(tmp_path / "long"), 100), OutputSpec(str(tmp_path / "mid"), 20, 300)]
    report = _prepare([src], outputs)
    assert [len(d) for d in _docs(str(tmp_path / "long"))] == [n for n in lengths if n >= 100]
    assert [len(d) for d in _docs(str(tmp_path / "mid"))] == [n for n in lengths if 20 <= n <= 300]
    assert report.skips.counts() == {"shorter than 20 tokens (--min-tokens)": 2}
    assert report.skips.examples("shorter than 20 tokens (--min-tokens)") == [f"{src}:1", f"{src}:2"]
    assert sorted(report.lengths) == sorted(lengths)  # the histogram covers dropped documents too


def test_code_repositories_become_one_document_each(tmp_path, llama3):
    repos = tmp_path / "repos"
    (repos / "alpha" / "pkg").mkdir(parents=True)
    (repos / "alpha" / "pkg" / "b.py").write_text("B = 2\n")
    (repos / "alpha" / "a.py").write_text("A = 1\n")
    (repos / "alpha" / "README.md").write_text("# Alpha\n")
    (repos / "alpha" / "blob.py").write_bytes(b"\xff\xfeb\x00i\x00n\x00")  # UTF-16: binary
    (repos / "alpha" / "latin1.py").write_bytes(b"caf\xe9 = 1\n")  # one byte that is not UTF-8
    (repos / "alpha" / "image.png").write_bytes(b"\x89PNG")
    (repos / "alpha" / ".git").mkdir()
    (repos / "alpha" / ".git" / "config.txt").write_text("secret")
    (repos / "beta").mkdir()
    (repos / "beta" / "main.c").write_text("int main(){}\n")
    (repos / "empty").mkdir()
    (repos / "loose.py").write_text("x = 1\n")
    report = _prepare([repos], [OutputSpec(str(tmp_path / "code"))], input_format="code-repos", add_bos=False,
                      add_eos=False)
    docs = [llama3.decode(d) for d in _docs(str(tmp_path / "code"))]
    assert docs == ["# File: README.md\n# Alpha\n\n# File: a.py\nA = 1\n\n# File: latin1.py\ncaf\ufffd = 1\n\n"
                    "# File: pkg/b.py\nB = 2\n", "# File: main.c\nint main(){}\n"]
    assert report.skips.counts() == {"repository binary file (NUL bytes), not read": 1,
                                     "repository without matching files": 1, "file outside any repository folder": 1}
    assert report.skips.examples("repository binary file (NUL bytes), not read") == [str(repos / "alpha" / "blob.py")]
    assert report.repairs.counts() == {REPLACED_UTF8: 1} and report.repairs.examples(REPLACED_UTF8) == [
        str(repos / "alpha")]


def test_workers_give_the_same_dataset_as_one_process(tmp_path, llama3):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " + "word " * (i % 50)}) + "\n" for i in range(600)))
    _prepare([src], [OutputSpec(str(tmp_path / "one"))], workers=1)
    report = _prepare([src], [OutputSpec(str(tmp_path / "two"))], workers=2)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()
    assert report.peak_worker_rss_bytes > 0


def test_bad_records_are_counted_with_file_and_line(tmp_path, llama3):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join([
        json.dumps({"text": "good one"}).encode(),
        b'{"text": "broken',
        json.dumps({"text": "   "}).encode(),
        b'{"text": "bad \xff byte"}',
        json.dumps({"text": "lone \udc80 surrogate"}).encode(),
        json.dumps({"body": "wrong key"}).encode(),
        json.dumps({"text": 42}).encode(),
        b"",
        json.dumps({"text": "good two"}).encode(),
    ]) + b"\n")
    report = _prepare([src], [OutputSpec(str(tmp_path / "out"))], add_bos=False, add_eos=False)
    assert [llama3.decode(d) for d in _docs(str(tmp_path / "out"))] == [
        "good one", "bad \ufffd byte", "lone \ufffd surrogate", "good two"]
    counts = report.skips.counts()
    assert counts.pop("malformed JSON (Unterminated string starting at)") == 1
    assert counts == {"empty document": 1, "no string 'text' field (--text-key)": 2}
    assert report.repairs.counts() == {REPLACED_UTF8: 2}
    assert report.repairs.examples(REPLACED_UTF8) == [f"{src}:4", f"{src}:5"]
    assert report.documents_read == 8 and report.skips.total() == 4
    assert PreparedDataset(str(tmp_path / "out")).meta["repaired"] == {REPLACED_UTF8: 2}


def test_truncated_json_array_keeps_complete_records(tmp_path):
    records = [{"text": f"record {i}"} for i in range(5)]
    whole = json.dumps(records)
    (tmp_path / "cut.json").write_text(whole[:whole.index("record 4") + 3])  # cut inside the last record
    report = _prepare([tmp_path / "cut.json"], [OutputSpec(str(tmp_path / "out"))], add_bos=False, add_eos=False)
    assert len(_docs(str(tmp_path / "out"))) == 4
    (reason,) = report.skips.counts()
    assert reason.startswith("malformed or truncated JSON record") and report.skips.examples(reason) == [
        f"{tmp_path / 'cut.json'}:record 5"]


@pytest.mark.parametrize("inputs, fmt, message", [
    (["missing.jsonl"], "auto", "input not found"),
    (["empty_dir"], "auto", "no input files in"),
    (["data.bin"], "auto", "cannot tell the format"),
    (["data.bin"], "code-repos", "must be a folder of repositories"),
])
def test_unreadable_inputs_are_refused_before_any_work(tmp_path, inputs, fmt, message):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        _prepare([tmp_path / i for i in inputs], [OutputSpec(str(tmp_path / "out"))], input_format=fmt)
    assert not list(tmp_path.glob("out*"))


def test_parquet_without_the_text_column_names_its_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "in.parquet")
    with pytest.raises(InputError, match=r"no column 'text' \(columns: content\)"):
        _prepare([tmp_path / "in.parquet"], [OutputSpec(str(tmp_path / "out"))])
    assert not list(tmp_path.glob("out*"))  # the failed run left no dataset behind


def test_cli_writes_summary_and_histogram(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": "word " * n}) + "\n" for n in (5, 50, 500)) + "not json\n")
    tool = load_tool("prepare_data")
    rc = tool.main(["--input", str(src), "--tokenizer", "llama3", "--output-prefix", str(tmp_path / "d"),
                    "--min-tokens", "10", "--bucket", f"{tmp_path / 'big'}:100", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "wrote " + str(tmp_path / "d") + ": 2 documents" in out and "wrote " + str(tmp_path / "big") + ": 1 documents" in out
    assert "shorter than 10 tokens" in out and f"{src}:4" in out and "document lengths" in out
    assert (tmp_path / "d.lengths.png").stat().st_size > 1000 and (tmp_path / "d.summary.txt").exists()
    assert tool.main(["--input", str(tmp_path / "nope"), "--tokenizer", "llama3", "--output-prefix", "x"]) == 2
    assert "input not found" in capsys.readouterr().err
