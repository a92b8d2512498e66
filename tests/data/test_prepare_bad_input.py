"""What real corpora throw at preparation: nothing usable, compressed files, encodings, a full disk."""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import lzma
import resource
import subprocess
import sys

import pytest
from data_helpers import REPO, load_tool

from megatron_ext.data.indexed import PreparedDataset
from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare
from megatron_ext.data.sources import BINARY_FILE, REPLACED_UTF8, SourceConfig


def _prepare(inputs, prefix, **source_kw):
    source = SourceConfig(inputs=[str(i) for i in inputs], **source_kw)
    return prepare(PrepareConfig(source=source, tokenizer="llama3", outputs=[OutputSpec(str(prefix))],
                                 add_bos=False, add_eos=False, progress=False))


def _texts(prefix, tokenizer):
    ds = PreparedDataset(str(prefix))
    return [tokenizer.decode(ds.read(i, 0, int(n))[0]) for i, n in enumerate(ds.doc_lengths)]


def _jsonl(texts) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


@pytest.mark.parametrize("name, content, options, message", [
    ("empty.jsonl", b"", [], "no records in"),
    ("zeros.txt", b"\x00" * 5000, [], f"every one of the 1 records was skipped: 1 {BINARY_FILE}"),
    ("body.jsonl", b'{"body": "x"}\n' * 3, [],
     "every one of the 3 records was skipped: 3 no string 'text' field (--text-key) (e.g. "),
    ("short.jsonl", b'{"text": "hi"}\n', ["--min-tokens", "100"], "out: no document of [100, inf] tokens"),
    ("short.jsonl", b'{"text": "hi"}\n', ["--bucket", "{tmp}/big:50"], "big: no document of [50, inf] tokens"),
])
def test_nothing_to_write_is_refused_with_the_reason_and_writes_nothing(tmp_path, capsys, llama3, name, content,
                                                                       options, message):
    (tmp_path / name).write_bytes(content)
    rc = load_tool("prepare_data").main(["--input", str(tmp_path / name), "--tokenizer", "llama3", "--output-prefix",
                                         str(tmp_path / "out"), "--no-progress",
                                         *[o.format(tmp=tmp_path) for o in options]])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: nothing written: ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # not even the outputs that had documents


def test_compressed_inputs_are_read_in_folders_and_directly(tmp_path, llama3):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl(["gzip one", "gzip two"])))
    (folder / "b.json.bz2").write_bytes(bz2.compress(json.dumps([{"text": "bzip2 array"}]).encode()))
    (folder / "c.txt.xz").write_bytes(lzma.compress(b"an xz book"))
    zstd = pytest.importorskip("zstandard").ZstdCompressor()
    (folder / "d.jsonl.zst").write_bytes(zstd.compress(_jsonl(["zstd one"])) + zstd.compress(_jsonl(["zstd two"])))
    (folder / "e.jsonl").write_bytes(_jsonl(["plain"]))
    (folder / "notes.csv").write_text("a,b\n")
    report = _prepare([folder], tmp_path / "out")
    assert _texts(tmp_path / "out", llama3) == [
        "gzip one", "gzip two", "bzip2 array", "an xz book", "zstd one", "zstd two", "plain"]
    assert report.skips.counts() == {"file not read: unknown suffix '.csv'": 1}  # said, never silent
    # Passed directly under any name, with the format given: decompressed by its first bytes.
    (tmp_path / "download.bin").write_bytes(gzip.compress(_jsonl(["named oddly"])))
    _prepare([tmp_path / "download.bin"], tmp_path / "direct", input_format="jsonl")
    assert _texts(tmp_path / "direct", llama3) == ["named oddly"]


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_cut_off_compressed_file_keeps_the_records_before_the_cut(tmp_path, kind):
    data = _jsonl([f"record {i} " + "word " * 50 for i in range(2000)])
    compress = gzip.compress if kind == "gzip" else pytest.importorskip("zstandard").ZstdCompressor().compress
    whole = compress(data)
    (tmp_path / "cut.jsonl.z").write_bytes(whole[:len(whole) // 2])
    report = _prepare([tmp_path / "cut.jsonl.z"], tmp_path / "out", input_format="jsonl")
    kept = len(PreparedDataset(str(tmp_path / "out")))
    assert 100 < kept < 2000
    (reason,) = [r for r in report.skips.counts() if not r.startswith("malformed JSON")]  # the torn last line
    assert reason.startswith(f"{kind} data corrupt or cut off: rest of the file unread")


def test_byte_order_marks_bad_bytes_and_binary_files(tmp_path, llama3):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.json").write_bytes(codecs.BOM_UTF8 + b'[{"text": "in an array"}]')
    (folder / "b.jsonl").write_bytes(codecs.BOM_UTF8 + _jsonl(["first", "second"]))
    (folder / "c.txt").write_bytes(codecs.BOM_UTF8 + b"Chapter 1\nA dark \xff\xfe night.\n")
    (folder / "d.txt").write_bytes(b"\x00" * 10_000)
    report = _prepare([folder], tmp_path / "out")
    assert _texts(tmp_path / "out", llama3) == ["in an array", "first", "second", "Chapter 1\nA dark \ufffd\ufffd night.\n"]
    assert report.skips.counts() == {BINARY_FILE: 1} and report.skips.examples(BINARY_FILE) == [str(folder / "d.txt")]
    assert report.repairs.counts() == {REPLACED_UTF8: 2} and report.repairs.examples(REPLACED_UTF8) == [str(folder / "c.txt")]


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("texts, limit, failing", [
    (["a", "b", "c"], 400, ".meta.json"),         # the tokens fit, the metadata does not
    (["word " * 3000], 4096, ".bin"),              # the tokens do not fit
])
def test_a_failed_write_says_which_file_and_leaves_nothing(tmp_path, python_env, llama3, texts, limit, failing):
    # A file-size limit makes writes fail past `limit` bytes as a full disk would (EFBIG, not ENOSPC).
    (tmp_path / "in.jsonl").write_bytes(_jsonl(texts))
    run = subprocess.run([sys.executable, str(REPO / "tools" / "prepare_data.py"), "--input", str(tmp_path / "in.jsonl"),
                          "--tokenizer", "llama3", "--output-prefix", str(tmp_path / "out"), "--no-progress"],
                         capture_output=True, text=True, env=python_env, preexec_fn=_limit_file_size(limit))
    assert run.returncode == 1 and run.stderr == f"error: cannot write {tmp_path / 'out'}.tmp{failing}: File too large\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
