"""Raw inputs -> a stream of documents, each unusable record turned into a counted skip.

Formats: jsonl, a JSON array (read record by record, so a file cut off mid-record keeps every
complete record), parquet, plain text (a file per document, or split at separator lines),
and folders of code repositories (one document per repository, files concatenated in path
order, each behind a header). With ``chat=True`` records are conversations (chat.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from megatron_ext.data.chat import BadConversation, Turn, parse_conversation

INPUT_FORMATS = ("jsonl", "json", "parquet", "text", "code-repos")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text"}
CODE_EXTENSIONS = (
    ".py", ".pyi", ".pyx", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".java", ".kt", ".scala", ".go", ".rs",
    ".js", ".ts", ".jsx", ".tsx", ".rb", ".php", ".cs", ".swift", ".m", ".r", ".jl", ".lua", ".pl", ".sh",
    ".sql", ".html", ".css", ".md", ".rst", ".txt", ".tex", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini",
)


class InputError(ValueError):
    """The input as a whole cannot be read (missing path, wrong format, missing column)."""


@dataclass
class Document:
    origin: str                           # where it came from: "file:line", "file:record 7", a repository
    text: Optional[str] = None
    turns: Optional[List[Turn]] = None    # chat records
    skipped: Optional[str] = None         # why this record is unusable (counted, never tokenized)
    skipped_files: List[Tuple[str, str]] = field(default_factory=list)  # (reason, file) inside a repository


@dataclass
class SourceConfig:
    inputs: List[str]
    input_format: str = "auto"            # auto (by file suffix) | one of INPUT_FORMATS
    text_key: str = "text"
    chat: bool = False
    document_separator: Optional[str] = None  # text files: regex a separator line matches in full
    code_extensions: Optional[Tuple[str, ...]] = CODE_EXTENSIONS  # None = every UTF-8 file
    file_header: str = "# File: {path}\n"
    max_documents: Optional[int] = None   # stop after this many records (trial runs)


def _is_valid_unicode(text: str) -> bool:
    """False for text holding lone surrogates: undecodable bytes (read with surrogateescape)
    or \\ud800-style escapes in JSON."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _document(origin: str, value: object, cfg: SourceConfig) -> Document:
    """A record's document, or a skip saying what is wrong with it."""
    if cfg.chat:
        try:
            turns = parse_conversation(value)
        except BadConversation as e:
            return Document(origin, skipped=str(e))
        if not all(_is_valid_unicode(t.content) for t in turns):
            return Document(origin, skipped="invalid UTF-8")
        return Document(origin, turns=turns)
    text = value.get(cfg.text_key) if isinstance(value, dict) else None
    if not isinstance(text, str):
        return Document(origin, skipped=f"no string '{cfg.text_key}' field")
    return _text_document(origin, text)


def _text_document(origin: str, text: str) -> Document:
    if not _is_valid_unicode(text):
        return Document(origin, skipped="invalid UTF-8")
    if not text.strip():
        return Document(origin, skipped="empty document")
    return Document(origin, text=text)


def _read_jsonl(path: Path, cfg: SourceConfig) -> Iterator[Document]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            origin = f"{path}:{line_no}"
            if not raw.strip():
                continue
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                yield Document(origin, skipped="invalid UTF-8")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield Document(origin, skipped=f"malformed JSON ({e.msg})")
                continue
            yield _document(origin, record, cfg)


def _read_json_array(path: Path, cfg: SourceConfig, chunk_chars: int = 1 << 20) -> Iterator[Document]:
    """Records of a ``[{...}, {...}]`` file, decoded one at a time (bounded memory; a file cut
    off mid-record yields all complete records, then one skip for the broken tail)."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
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

    table = pq.ParquetFile(path)
    columns = table.schema_arrow.names
    wanted = ["messages" if "messages" in columns else "conversations"] if cfg.chat else [cfg.text_key]
    if wanted[0] not in columns:
        raise InputError(f"{path}: no column '{wanted[0]}' (columns: {', '.join(columns)}); set --text-key")
    row = 0
    for batch in table.iter_batches(columns=wanted, batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            yield _document(f"{path}:row {row}", {wanted[0]: value}, cfg)


def _read_text(path: Path, cfg: SourceConfig) -> Iterator[Document]:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
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
            try:
                content = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(("repository file not UTF-8", str(path)))
                continue
            parts.append(cfg.file_header.format(path=rel, repo=entry.name) + content)
        if not parts:
            yield Document(str(entry), skipped="repository without matching files", skipped_files=skipped)
        else:
            yield Document(str(entry), text="\n".join(parts), skipped_files=skipped)


_READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "parquet": _read_parquet, "text": _read_text}


def _format_of(path: Path, cfg: SourceConfig) -> Optional[str]:
    return cfg.input_format if cfg.input_format != "auto" else _SUFFIX_FORMATS.get(path.suffix.lower())


def _files(cfg: SourceConfig) -> List[Tuple[Path, str]]:
    """(file, format) for every input, folders expanded; refuses what cannot be read."""
    if cfg.input_format not in ("auto",) + INPUT_FORMATS:
        raise InputError(f"input format '{cfg.input_format}' is not one of auto, {', '.join(INPUT_FORMATS)}")
    found: List[Tuple[Path, str]] = []
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
                raise InputError(f"{path}: cannot tell the format from the suffix; set --input-format")
            found.append((path, _format_of(path, cfg)))
        else:
            files = [(p, _format_of(p, cfg)) for p in sorted(path.rglob("*"))
                     if p.is_file() and not p.name.startswith(".") and _format_of(p, cfg)]
            if not files:
                raise InputError(f"no input files in {spec} (known suffixes: {', '.join(_SUFFIX_FORMATS)})")
            found += files
    if cfg.chat and any(fmt in ("text", "code-repos") for _, fmt in found):
        raise InputError("chat data must be jsonl, json or parquet records")
    return found


def input_bytes(cfg: SourceConfig) -> int:
    """Total size of the inputs (for progress)."""
    total = 0
    for path, fmt in _files(cfg):
        if fmt == "code-repos":
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        else:
            total += path.stat().st_size
    return total


def read_documents(cfg: SourceConfig) -> Iterator[Document]:
    """Every document of every input, in a fixed order (files sorted), skips included."""
    documents = (doc for path, fmt in _files(cfg)
                 for doc in (_read_repositories(path, cfg) if fmt == "code-repos" else _READERS[fmt](path, cfg)))
    return islice(documents, cfg.max_documents)
