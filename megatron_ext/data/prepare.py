"""Raw documents -> tokenized Megatron datasets, in parallel, with a full account of what was kept.

One pass reads the inputs in a fixed order, tokenizes them in worker processes (results come
back in input order, so the output is the same for any worker count) and writes every
document to each output whose length range holds it: tokenize books once, get the stage-1
>=64K set and the stage-2 64K-512K / >=512K sets together.

A run writes every output or none: one that would be empty (every record skipped, or no
document in its length range) fails the run with the reason, as does a failed write (disk full).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np

from megatron_ext.data.chat import encode_conversation
from megatron_ext.data.indexed import DatasetWriter
from megatron_ext.data.sources import Document, SourceConfig, input_bytes, read_documents
from megatron_ext.data.summary import CountLog, length_histogram
from megatron_ext.data.tokenizer import Tokenizer, load_tokenizer

Encoded = Tuple[np.ndarray, Optional[np.ndarray]]


@dataclass
class OutputSpec:
    prefix: str
    min_tokens: int = 1
    max_tokens: Optional[int] = None

    def accepts(self, length: int) -> bool:
        return length >= self.min_tokens and (self.max_tokens is None or length <= self.max_tokens)

    def describe(self) -> str:
        return f"[{self.min_tokens:,}, {'inf' if self.max_tokens is None else f'{self.max_tokens:,}'}] tokens"


@dataclass
class PrepareConfig:
    source: SourceConfig
    tokenizer: str
    outputs: List[OutputSpec]
    add_bos: bool = True      # text documents; chat follows its template (BOS, no EOS)
    add_eos: bool = True
    workers: int = 1
    progress: bool = True


@dataclass
class PrepareReport:
    tokenizer: dict
    outputs: List[dict]
    documents_read: int = 0
    skips: CountLog = field(default_factory=CountLog)
    repairs: CountLog = field(default_factory=lambda: CountLog("repaired", "documents"))
    lengths: array = field(default_factory=lambda: array("q"))  # every tokenized document, kept or not
    tokens_tokenized: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0          # main process
    peak_worker_rss_bytes: int = 0   # largest worker


class DocumentEncoder:
    def __init__(self, tokenizer: Tokenizer, add_bos: bool, add_eos: bool):
        self.tokenizer, self.add_bos, self.add_eos = tokenizer, add_bos, add_eos

    def __call__(self, doc: Document) -> Encoded:
        if doc.turns is not None:
            return encode_conversation(doc.turns, self.tokenizer)
        ids = self.tokenizer.encode_array(doc.text)
        tokens = np.empty(self.add_bos + len(ids) + self.add_eos, dtype=np.int32)
        tokens[self.add_bos:self.add_bos + len(ids)] = ids
        if self.add_bos:
            tokens[0] = self.tokenizer.bos_id
        if self.add_eos:
            tokens[-1] = self.tokenizer.eos_id
        return tokens, None


_ENCODER: Optional[DocumentEncoder] = None


def _init_worker(tokenizer_spec: str, add_bos: bool, add_eos: bool) -> None:
    global _ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: N processes = N cores
    _ENCODER = DocumentEncoder(load_tokenizer(tokenizer_spec), add_bos, add_eos)


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, is not inherited across
    the fork+exec that starts a spawned worker."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _encode_chunk(docs: List[Document]) -> Tuple[List[Encoded], int]:
    return [_ENCODER(d) for d in docs], peak_rss_bytes()


def _chars(doc: Document) -> int:
    return len(doc.text or "") + sum(len(t.content) for t in doc.turns or [])


def _chunks(documents: Iterator[Document], max_docs: int = 256, max_chars: int = 4 << 20) -> Iterator[List[Document]]:
    chunk, chars = [], 0
    for doc in documents:
        chunk.append(doc)
        chars += _chars(doc)
        if len(chunk) >= max_docs or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _encoded(documents: Iterator[Document], cfg: PrepareConfig, encoder: DocumentEncoder,
             report: PrepareReport) -> Iterator[Tuple[Document, Optional[Encoded]]]:
    """(document, ids or None if skipped) in input order. Workers get at most 2 chunks each in
    flight, so reading never runs ahead of tokenizing by more than that (bounded memory)."""
    if cfg.workers <= 1:
        for doc in documents:
            yield doc, None if doc.skipped else encoder(doc)
        return
    ctx = mp.get_context("spawn")  # workers start clean: no inherited threads or locks
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg.tokenizer, cfg.add_bos, cfg.add_eos)) as pool:
        pending = deque()

        def finish_oldest():
            chunk, result = pending.popleft()
            encoded, worker_rss = result.get()
            report.peak_worker_rss_bytes = max(report.peak_worker_rss_bytes, worker_rss)
            results = iter(encoded)
            for doc in chunk:
                yield doc, None if doc.skipped else next(results)

        for chunk in _chunks(documents):
            pending.append((chunk, pool.apply_async(_encode_chunk, ([d for d in chunk if not d.skipped],))))
            if len(pending) >= 2 * cfg.workers:
                yield from finish_oldest()
        while pending:
            yield from finish_oldest()


def _length_skip_reason(length: int, outputs: List[OutputSpec]) -> str:
    if all(length < o.min_tokens for o in outputs):
        return f"shorter than {min(o.min_tokens for o in outputs):,} tokens (--min-tokens)"
    if all(o.max_tokens is not None and length > o.max_tokens for o in outputs):
        return f"longer than {max(o.max_tokens for o in outputs):,} tokens (--max-tokens)"
    return "outside every output's length range"


def _check_tokenizer(tokenizer: Tokenizer, cfg: PrepareConfig) -> None:
    if cfg.source.chat:
        for token in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
            tokenizer.special_token_id(token)  # the Llama-3 chat template needs them
    if (cfg.add_bos or cfg.source.chat) and tokenizer.bos_id is None:
        raise ValueError(f"tokenizer {tokenizer.name} has no BOS token; use --no-bos")
    if cfg.add_eos and not cfg.source.chat and tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.name} has no EOS token; use --no-eos")


def _empty_output_problems(report: PrepareReport, writers: List[DatasetWriter], outputs: List[OutputSpec],
                           inputs: List[str]) -> List[str]:
    """Why outputs would be empty; an empty dataset cannot even be opened for training."""
    if not report.documents_read:
        return [f"no records in {', '.join(inputs)} (empty files?)"]
    if not report.lengths:
        reasons = "; ".join(f"{n:,} {reason} (e.g. {report.skips.examples(reason)[0]})"
                            for reason, n in sorted(report.skips.counts().items(), key=lambda kv: -kv[1]))
        return [f"every one of the {report.documents_read:,} records was skipped: {reasons}"]
    lengths = np.frombuffer(report.lengths, dtype=np.int64)
    return [f"{o.prefix}: no document of {o.describe()} (the {len(lengths):,} documents have "
            f"{int(lengths.min()):,} to {int(lengths.max()):,} tokens)"
            for w, o in zip(writers, outputs) if w.documents == 0]


def prepare(cfg: PrepareConfig) -> PrepareReport:
    """Tokenize ``cfg.source`` into every output; raises on unusable input as a whole (and
    writes nothing), counts unusable records (with examples) in the report."""
    from tqdm import tqdm

    if not cfg.outputs:
        raise ValueError("no output prefix given")
    if len({o.prefix for o in cfg.outputs}) != len(cfg.outputs):
        raise ValueError("output prefixes must differ")
    tokenizer = load_tokenizer(cfg.tokenizer)
    _check_tokenizer(tokenizer, cfg)
    bos, eos = (True, False) if cfg.source.chat else (cfg.add_bos, cfg.add_eos)  # chat: the template's
    total_bytes = input_bytes(cfg.source)
    report = PrepareReport(tokenizer=tokenizer.describe(), outputs=[])
    writers: List[DatasetWriter] = []
    start = time.time()
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not cfg.progress)
    try:
        for spec in cfg.outputs:
            writers.append(DatasetWriter(spec.prefix, tokenizer.vocab_size, with_loss_mask=cfg.source.chat))
        for doc, encoded in _encoded(read_documents(cfg.source), cfg, DocumentEncoder(tokenizer, cfg.add_bos, cfg.add_eos), report):
            report.documents_read += 1
            bar.update(_chars(doc))
            for reason, origin in doc.skipped_files:
                report.skips.add(reason, origin)
            if encoded is None:
                report.skips.add(doc.skipped, doc.origin)
                continue
            for reason, n in doc.repairs.items():
                report.repairs.add(reason, doc.origin, n)
            tokens, mask = encoded
            report.lengths.append(len(tokens))
            report.tokens_tokenized += len(tokens)
            targets = [w for w, o in zip(writers, cfg.outputs) if o.accepts(len(tokens))]
            if not targets:
                report.skips.add(_length_skip_reason(len(tokens), cfg.outputs), doc.origin)
            for writer in targets:
                writer.add(tokens, mask)
            if report.documents_read % 256 == 0:
                bar.set_postfix(docs=report.documents_read, tokens=f"{report.tokens_tokenized / 1e6:.1f}M", refresh=False)
        problems = _empty_output_problems(report, writers, cfg.outputs, cfg.source.inputs)
        if problems:
            raise ValueError("nothing written: " + "; ".join(problems))
        report.seconds = time.time() - start
        report.peak_rss_bytes = peak_rss_bytes()
        for writer, spec in zip(writers, cfg.outputs):
            meta = {"tokenizer": report.tokenizer, "min_tokens": spec.min_tokens, "max_tokens": spec.max_tokens,
                    "bos": bos, "eos": eos, "inputs": list(cfg.source.inputs),
                    "input_format": cfg.source.input_format, "chat": cfg.source.chat,
                    "skipped": report.skips.counts(), "repaired": report.repairs.counts()}
            report.outputs.append({"prefix": spec.prefix, "range": spec.describe(), **writer.finish(meta)})
        for writer in writers:  # only once every output is complete
            writer.commit()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        bar.close()
    return report


def summary_text(report: PrepareReport) -> str:
    lines = [f"tokenizer {report.tokenizer['name']} (vocabulary {report.tokenizer['vocab_size']:,})",
             f"read {report.documents_read:,} documents, tokenized {len(report.lengths):,} "
             f"({report.tokens_tokenized:,} tokens) in {report.seconds:.1f}s = "
             f"{report.tokens_tokenized / max(report.seconds, 1e-9):,.0f} tokens/s; peak memory "
             f"{report.peak_rss_bytes / 2**20:,.0f} MiB (main), {report.peak_worker_rss_bytes / 2**20:,.0f} MiB (worker)"]
    for out in report.outputs:
        lines.append(f"wrote {out['prefix']}: {out['documents']:,} documents, {out['tokens']:,} tokens, "
                     f"lengths {out['range']}{' + loss mask' if out['loss_mask'] else ''}")
    lines += report.skips.lines() + (report.repairs.lines() if report.repairs.total() else [])
    lines += ["document lengths (tokens):"] + length_histogram(report.lengths)
    return "\n".join(lines)
