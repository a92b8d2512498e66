"""Raw inputs -> a stream of documents, each unusable record turned into a counted skip.

Formats: jsonl, a JSON array (read record by record, so a file cut off mid-record keeps every
complete record), parquet, plain text (a file per document, or split at separator lines),
and folders of code repositories (one document per repository, files concatenated in path
order, each behind a header). With ``chat=True`` records are conversations (chat.py).

jsonl, json and text files may be compressed (gzip, bzip2, xz, zstd), recognised by their first
bytes; a ``.gz``/``.bz2``/``.xz``/``.zst`` suffix is looked through to tell the format.
Text is UTF-8: a byte-order mark is dropped, and each byte that is not UTF-8 (or JSON escape of a
lone surrogate) becomes U+FFFD and is counted as a repair of its document. A file with a NUL byte
in its first 8 KiB is binary and skipped, as git decides.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import os
import re
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

from megatron_ext.data.chat import BadConversation, Turn, parse_conversation

INPUT_FORMATS = ("jsonl", "json", "parquet", "text", "code-repos")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd")
KNOWN_SUFFIXES = ".jsonl .json .txt (each also .gz .bz2 .xz .zst) and .parquet"
_MAGIC = re.compile(rb"(?P<gzip>\x1f\x8b)|(?P<bzip2>BZh[1-9](?:1AY&SY|\x17rE8P\x90))|(?P<xz>\xfd7zXZ\x00)|"
                    rb"(?P<zstd>\x28\xb5\x2f\xfd)")
CODE_EXTENSIONS = (
    ".py", ".pyi", ".pyx", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".java", ".kt", ".scala", ".go", ".rs",
    ".js", ".ts", ".jsx", ".tsx", ".rb", ".php", ".cs", ".swift", ".m", ".r", ".jl", ".lua", ".pl", ".sh",
    ".sql", ".html", ".css", ".md", ".rst", ".txt", ".tex", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini",
)
BINARY_SNIFF_BYTES = 8192
REPLACED_UTF8 = "bytes not UTF-8 (or lone-surrogate escapes) replaced with U+FFFD"
BINARY_FILE = "binary file (NUL bytes), not read"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class InputError(ValueError):
    """The input as a whole cannot be read (missing path, wrong format, missing column)."""


@dataclass
class Document:
    origin: str                           # where it came from: "file:line", "file:record 7", a repository
    text: Optional[str] = None
    turns: Optional[List[Turn]] = None    # chat records
    skipped: Optional[str] = None         # why this record is unusable (counted, never tokenized)
    skipped_files: List[Tuple[str, str]] = field(default_factory=list)  # (reason, file) inside a repository
    repairs: Dict[str, int] = field(default_factory=dict)  # what was fixed in a kept document -> how many


@dataclass
class SourceConfig:
    inputs: List[str]
    input_format: str = "auto"            # auto (by file suffix) | one of INPUT_FORMATS
    text_key: str = "text"
    chat: bool = False
    document_separator: Optional[str] = None  # text files: regex a separator line matches in full
    code_extensions: Optional[Tuple[str, ...]] = CODE_EXTENSIONS  # None = every text file
    file_header: str = "# File: {path}\n"
    max_documents: Optional[int] = None   # stop after this many records (trial runs)


class _ZstdReader(io.RawIOBase):
    """A zstd file as a byte stream, across frames, raising EOFError if it is cut off inside one
    (zstandard's own stream_reader ends silently there)."""

    def __init__(self, f: BinaryIO):
        import zstandard

        self._file, self._decompressor, self._frame = f, zstandard.ZstdDecompressor(), None
        self._out, self._at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("zstd data ends inside a frame")
                return 0
            out = []
            while chunk:
                if self._frame is None or self._frame.eof:
                    self._frame = self._decompressor.decompressobj()
                out.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
            self._out, self._at = b"".join(out), 0
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = self._out[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _compression(path: Path) -> Optional[str]:
    """gzip, bzip2, xz or zstd, by the file's first bytes; None for anything else."""
    with open(path, "rb") as f:
        match = _MAGIC.match(f.read(10))
    return match.lastgroup if match else None


def _open(path: Path, kind: Optional[str]) -> BinaryIO:
    """``path`` as a buffered byte stream, decompressed (``kind``: what _compression found)."""
    raw = open(path, "rb")
    if kind == "gzip":
        raw = gzip.GzipFile(fileobj=raw)
    elif kind == "bzip2":
        raw = bz2.BZ2File(raw)
    elif kind == "xz":
        raw = lzma.LZMAFile(raw)
    elif kind == "zstd":
        try:
            raw = _ZstdReader(raw)
        except ImportError:
            raw.close()
            raise InputError(f"{path} is zstd-compressed: pip install zstandard (part of the data extra)") from None
    # A corrupt block loses what its buffer held: small buffers keep more of a cut-off file.
    return io.BufferedReader(raw, buffer_size=1 << 16) if kind else raw


def _corrupt_stream_errors() -> tuple:
    """What a decompressor raises on corrupt or cut-off data."""
    errors = (EOFError, OSError, zlib.error, lzma.LZMAError)
    try:
        import zstandard

        return errors + (zstandard.ZstdError,)
    except ImportError:
        return errors


def _is_binary(stream: BinaryIO) -> bool:
    return b"\x00" in stream.peek(BINARY_SNIFF_BYTES)[:BINARY_SNIFF_BYTES]


def _repaired(text: str) -> Tuple[str, int]:
    """``text`` with lone surrogates (undecodable bytes read with surrogateescape, or \\ud800-style
    JSON escapes) replaced by U+FFFD, and how many there were."""
    if text.isascii():
        return text, 0
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        return _LONE_SURROGATE.subn("\ufffd", text)


def _document(origin: str, value: object, cfg: SourceConfig) -> Document:
    """A record's document, or a skip saying what is wrong with it."""
    if cfg.chat:
        try:
            turns, dropped = parse_conversation(value)
        except BadConversation as e:
            return Document(origin, skipped=str(e))
        replaced = 0
        for turn in turns:
            turn.content, n = _repaired(turn.content)
            replaced += n
        repairs = {REPLACED_UTF8: replaced, "empty turns dropped": dropped}
        return Document(origin, turns=turns, repairs={k: n for k, n in repairs.items() if n})
    text = value.get(cfg.text_key) if isinstance(value, dict) else None
    if not isinstance(text, str):
        return Document(origin, skipped=f"no string '{cfg.text_key}' field (--text-key)")
    return _text_document(origin, text)


def _text_document(origin: str, text: str) -> Document:
    text, replaced = _repaired(text)
    if not text or text.isspace():
        return Document(origin, skipped="empty document")
    return Document(origin, text=text, repairs={REPLACED_UTF8: replaced} if replaced else {})


def _read_jsonl(path: Path, stream: BinaryIO, cfg: SourceConfig) -> Iterator[Document]:
    for line_no, raw in enumerate(stream, 1):
        origin = f"{path}:{line_no}"
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as e:
            yield Document(origin, skipped=f"malformed JSON ({e.msg})")
            continue
        yield _document(origin, record, cfg)


def _read_json_array(path: Path, stream: BinaryIO, cfg: SourceConfig, chunk_chars: int = 1 << 20) -> Iterator[Document]:
    """Records of a ``[{...}, {...}]`` file, decoded one at a time (bounded memory; a file cut
    off mid-record yields all complete records, then one skip for the broken tail)."""
    decoder = json.JSONDecoder()
    f = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape")
    buffer, pos, eof, record_no = f.read(chunk_chars), 0, False, 0
    pos = len(buffer) - len(buffer.lstrip())
    if buffer[pos:pos + 1] != "[":
        raise InputError(f"{path}: not a JSON array (use --input-format jsonl for one record per line)")
    pos += 1
    while True:
        while pos < len(buffer) and buffer[pos] in " \t\r\n,":
            pos += 1
        if pos < len(buffer) and buffer[pos] == "]":
            return
        try:
            record, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError as e:
            if not eof:
                more = f.read(chunk_chars)
                eof = not more
                buffer, pos = buffer[pos:] + more, 0
                continue
            rest = len(buffer) - pos
            if rest:
                yield Document(f"{path}:record {record_no + 1}",
                               skipped=f"malformed or truncated JSON record ({e.msg}; {rest} chars unread)")
            return
        record_no += 1
        yield _document(f"{path}:record {record_no}", record, cfg)
        pos = end


def _read_parquet(path: Path, cfg: SourceConfig) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors name no file
        raise InputError(f"{path}: not a readable parquet file ({e})") from None
    columns = table.schema_arrow.names
    wanted = ["messages" if "messages" in columns else "conversations"] if cfg.chat else [cfg.text_key]
    if wanted[0] not in columns:
        raise InputError(f"{path}: no column '{wanted[0]}' (columns: {', '.join(columns)}); set --text-key")
    row = 0
    for batch in table.iter_batches(columns=wanted, batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            yield _document(f"{path}:row {row}", {wanted[0]: value}, cfg)


def _decode(data: bytes) -> str:
    """UTF-8 without a byte-order mark; undecodable bytes stay as lone surrogates for _repaired to count."""
    return data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _read_text(path: Path, stream: BinaryIO, cfg: SourceConfig) -> Iterator[Document]:
    text = _decode(stream.read())
    if cfg.document_separator is None:
        yield _text_document(str(path), text)
        return
    separator = re.compile(cfg.document_separator)
    lines, first_line = [], 1
    for line_no, line in enumerate(text.splitlines(keepends=True), 1):
        if separator.fullmatch(line.rstrip("\r\n")):
            if "".join(lines).strip():
                yield _text_document(f"{path}:{first_line}", "".join(lines))
            lines, first_line = [], line_no + 1
        else:
            lines.append(line)
    if "".join(lines).strip():
        yield _text_document(f"{path}:{first_line}", "".join(lines))


def _repository_files(repo: Path) -> Iterator[Path]:
    """Regular files below ``repo`` in path order, skipping hidden entries (.git) and symlinks."""
    for root, dirs, files in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and not path.is_symlink():
                yield path


def _read_repositories(root: Path, cfg: SourceConfig) -> Iterator[Document]:
    """Each sub-folder of ``root`` (or a link to one) is one repository and becomes one document."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            yield Document(str(entry), skipped="file outside any repository folder")
            continue
        parts, skipped = [], []
        for path in _repository_files(entry):
            rel = path.relative_to(entry).as_posix()
            if cfg.code_extensions is not None and path.suffix.lower() not in cfg.code_extensions:
                continue
            data = path.read_bytes()
            if b"\x00" in data[:BINARY_SNIFF_BYTES]:
                skipped.append((f"repository {BINARY_FILE}", str(path)))
                continue
            parts.append(cfg.file_header.format(path=rel, repo=entry.name) + _decode(data))
        if not parts:
            yield Document(str(entry), skipped="repository without matching files", skipped_files=skipped)
        else:
            document = _text_document(str(entry), "\n".join(parts))
            document.skipped_files = skipped
            yield document


_STREAM_READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "text": _read_text}


def _read_file(path: Path, fmt: Optional[str], cfg: SourceConfig) -> Iterator[Document]:
    if fmt is None:
        yield Document(str(path), skipped=f"file not read: unknown suffix '{path.suffix.lower() or 'none'}'")
        return
    if fmt == "code-repos":
        yield from _read_repositories(path, cfg)
        return
    if fmt == "parquet":
        yield from _read_parquet(path, cfg)
        return
    kind = _compression(path)
    corrupt_data = _corrupt_stream_errors() if kind else ()  # uncompressed: a read error is a real I/O error
    with _open(path, kind) as stream:
        try:
            if _is_binary(stream):
                yield Document(str(path), skipped=BINARY_FILE)
                return
            yield from _STREAM_READERS[fmt](path, stream, cfg)
        except corrupt_data as e:
            # The records before the damage are kept, as for a truncated JSON array.
            yield Document(str(path), skipped=f"{kind} data corrupt or cut off: rest of the file unread ({e})")


def _format_of(path: Path, cfg: SourceConfig) -> Optional[str]:
    """The format by suffix (``.jsonl.gz`` is jsonl), or None if unknown."""
    if cfg.input_format != "auto":
        return cfg.input_format
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSION_SUFFIXES
    fmt = _SUFFIX_FORMATS.get(suffixes[-1 - compressed]) if len(suffixes) > compressed else None
    return None if compressed and fmt == "parquet" else fmt  # parquet compresses inside


def _files(cfg: SourceConfig) -> List[Tuple[Path, Optional[str]]]:
    """(file, format) for every input, folders expanded; format None for a folder's files of
    unknown suffix (reported as skips, never silently dropped). Refuses what cannot be read."""
    if cfg.input_format not in ("auto",) + INPUT_FORMATS:
        raise InputError(f"input format '{cfg.input_format}' is not one of auto, {', '.join(INPUT_FORMATS)}")
    found: List[Tuple[Path, Optional[str]]] = []
    for spec in cfg.inputs:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"input not found: {spec}")
        if cfg.input_format == "code-repos":
            if not path.is_dir():
                raise InputError(f"code-repos input must be a folder of repositories: {spec}")
            found.append((path, "code-repos"))
        elif path.is_file():
            if _format_of(path, cfg) is None:
                raise InputError(f"{path}: cannot tell the format from the suffix (known: {KNOWN_SUFFIXES}); set "
                                 f"--input-format")
            found.append((path, _format_of(path, cfg)))
        else:
            files = [(p, _format_of(p, cfg)) for p in sorted(path.rglob("*"))
                     if p.is_file() and not p.name.startswith(".")]
            if not any(fmt for _, fmt in files):
                raise InputError(f"no input files in {spec} (known suffixes: {KNOWN_SUFFIXES})")
            found += files
    if cfg.chat and any(fmt in ("text", "code-repos") for _, fmt in found):
        raise InputError("chat data must be jsonl, json or parquet records")
    return found


def input_bytes(cfg: SourceConfig) -> Optional[int]:
    """Total size of the inputs (for progress); None if some are compressed (size unknown)."""
    total = 0
    for path, fmt in _files(cfg):
        if fmt == "code-repos":
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        elif fmt is not None and _compression(path):
            return None
        elif fmt is not None:
            total += path.stat().st_size
    return total


def read_documents(cfg: SourceConfig) -> Iterator[Document]:
    """Every document of every input, in a fixed order (files sorted), skips included."""
    documents = (doc for path, fmt in _files(cfg) for doc in _read_file(path, fmt, cfg))
    return islice(documents, cfg.max_documents)
