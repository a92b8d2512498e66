"""Tokenization throughput of tools/prepare_data.py against the tokenizer alone.

    python tools/benchmark_tokenization.py --tokens 20e6 --workers 1,2 --out runs/bench/tokenize.json

Builds a jsonl corpus of >= --tokens from the mini corpus' sources, a third of its characters
each: books (GCIDE in 200K-character pieces, the Bible), code (the Python standard library, a
file per document) and short documents (fortunes, Debian copyright files), each source repeated
if it runs out; then runs each measurement as a process of its own:
  - tiktoken alone: read the jsonl and encode_ordinary each text, nothing else (the floor);
  - HF alone: the same loop with the equivalent Hugging Face fast tokenizer;
  - tools/prepare_data.py --tokenizer llama3 --workers N: the whole command, start-up to dataset.
For each: tokens/s over the process's whole life (start-up and imports included) and over the
tokenizing loop alone, CPU seconds per million tokens (every process, workers included: on a
shared machine this is steadier than wall time) and peak memory (largest process).
The HF tokenizer is Llama-3's tiktoken file converted by transformers (same ids).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CHARS_PER_TOKEN = 4.5  # sizes the corpus generously (measured: ~4 on this mix); the exact count is reported
TOOL = Path(__file__).resolve().parent / "prepare_data.py"


def _books():
    gcide = gzip.open("/usr/share/dictd/gcide.dict.dz").read().decode("utf-8", "replace")
    yield from (gcide[i:i + 200_000] for i in range(0, len(gcide), 200_000))
    yield subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"], capture_output=True, check=True).stdout.decode()


def _code():
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        yield path.read_text(errors="replace")


def _short():
    for path in sorted(Path("/usr/share/games/fortunes").iterdir()):
        if path.is_file() and not path.suffix:
            yield from path.read_bytes().decode("utf-8", "replace").split("\n%\n")
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        yield path.read_text(errors="replace")


def _texts():
    """Books, code and short documents in equal shares of characters, each source cycled."""
    sources = [_books, _code, _short]
    streams, chars = [source() for source in sources], [0] * len(sources)
    while True:
        k = chars.index(min(chars))
        text = next(streams[k], None)
        if text is None:
            streams[k] = sources[k]()
            continue
        chars[k] += len(text)
        yield text


def write_corpus(path: Path, tokens: float) -> int:
    chars, docs = 0, 0
    with open(path, "w") as f:
        for text in _texts():
            if chars >= tokens * CHARS_PER_TOKEN:
                break
            if text.strip():
                f.write(json.dumps({"text": text}) + "\n")
                chars, docs = chars + len(text), docs + 1
    return docs


def save_hf_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from megatron_ext.data.tokenizer import LLAMA3_SPECIAL_TOKENS, llama3_tokenizer_file

    backend = TikTokenConverter(vocab_file=str(llama3_tokenizer_file()), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(out)


def tokenizer_alone(corpus: Path, backend: str, hf_dir: Path) -> dict:
    """The plain loop: what the tokenizer itself costs on this corpus."""
    from megatron_ext.data.prepare import peak_rss_bytes

    if backend == "tiktoken":
        from megatron_ext.data.tokenizer import load_tokenizer

        encode = load_tokenizer("llama3")._encoding.encode_ordinary
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        tok.model_max_length = 1 << 62
        backend_encode = tok.backend_tokenizer.encode  # the Rust tokenizer, no Python wrapper
        encode = lambda text: backend_encode(text, add_special_tokens=False).ids  # noqa: E731
    start, tokens = time.time(), 0
    with open(corpus) as f:
        for line in f:
            tokens += len(encode(json.loads(line)["text"]))
    return {"tokens": tokens, "loop_seconds": time.time() - start, "peak_mib": peak_rss_bytes() / 2**20}


def _measure(command: list) -> dict:
    """Run ``command``: its output, wall time and CPU time (its worker processes included)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall, after = time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"out": run.stdout, "wall_seconds": wall, "cpu_seconds": cpu}


def run_alone(corpus: Path, backend: str, hf_dir: Path) -> dict:
    result = _measure([sys.executable, __file__, "--alone", backend, str(corpus), str(hf_dir)])
    return {**json.loads(result["out"].strip().splitlines()[-1]), **result}


def run_prepare(corpus: Path, workers: int, out: Path) -> dict:
    result = _measure([sys.executable, str(TOOL), "--input", str(corpus), "--tokenizer", "llama3", "--output-prefix",
                       str(out), "--workers", str(workers), "--no-progress"])
    tokens, seconds = re.search(r"\(([\d,]+) tokens\) in ([\d.]+)s", result["out"]).groups()
    peaks = re.search(r"peak memory ([\d,]+) MiB \(main\), ([\d,]+) MiB \(worker\)", result["out"]).groups()
    return {"tokens": int(tokens.replace(",", "")), "loop_seconds": float(seconds),
            "peak_mib": max(float(p.replace(",", "")) for p in peaks), **result}


def _row(r: dict) -> dict:
    return {"tokens": r["tokens"], "tokens_per_s": r["tokens"] / r["wall_seconds"],
            "loop_tokens_per_s": r["tokens"] / r["loop_seconds"], "wall_seconds": r["wall_seconds"],
            "cpu_seconds_per_million_tokens": r["cpu_seconds"] / (r["tokens"] / 1e6), "peak_mib": r["peak_mib"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--tokens", type=float, default=20e6, help="corpus size to build (approximate)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face loop (the slowest run)")
    p.add_argument("--work-dir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--alone", nargs=3, help=argparse.SUPPRESS)  # internal: one tokenizer-alone loop
    args = p.parse_args(argv)
    if args.alone:
        backend, corpus, hf_dir = args.alone
        print(json.dumps(tokenizer_alone(Path(corpus), backend, Path(hf_dir))))
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tokenize_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, hf_dir = work / "corpus.jsonl", work / "llama3_hf"
    docs = write_corpus(corpus, args.tokens)
    print(f"corpus: {corpus} ({docs:,} documents, {corpus.stat().st_size / 2**20:,.0f} MiB); cpus: {os.cpu_count()}",
          flush=True)
    runs = {"tiktoken alone (encode_ordinary loop)": lambda: run_alone(corpus, "tiktoken", hf_dir)}
    if not args.no_hf:
        save_hf_tokenizer(hf_dir)
        runs["HF fast tokenizer alone (loop)"] = lambda: run_alone(corpus, "hf", hf_dir)
    for n in (int(w) for w in args.workers.split(",")):
        runs[f"prepare_data.py --workers {n}"] = lambda n=n: run_prepare(corpus, n, work / f"out_{n}")
    results = {}
    for name, run in runs.items():
        results[name] = _row(run())
        print(f"{name}: {results[name]['tokens_per_s']:,.0f} tokens/s", flush=True)
    print(f"\n{'run':<40} {'tokens':>12} {'wall s':>7} {'tokens/s':>10} {'loop tokens/s':>14} {'CPU s/M tokens':>15} "
          f"{'peak MiB':>9}")
    for name, r in results.items():
        print(f"{name:<40} {r['tokens']:>12,} {r['wall_seconds']:>7.1f} {r['tokens_per_s']:>10,.0f} "
              f"{r['loop_tokens_per_s']:>14,.0f} {r['cpu_seconds_per_million_tokens']:>15.2f} {r['peak_mib']:>9,.0f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "documents": docs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
