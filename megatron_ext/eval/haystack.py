"""Haystack text for needle tasks, from sources that exist offline on any machine.

The default is prose that ships with CPython itself: the language reference topics used by
``help()`` and the docstrings of a fixed list of stdlib modules (~1 MB, ~250K Llama tokens;
longer haystacks wrap around). Any ``.txt`` file or directory of ``.txt`` files can be used
instead, e.g. a Bible or book corpus from the data pipeline.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from functools import lru_cache
from pathlib import Path

STDLIB = "stdlib"

# Modules with long English docstrings that import on every CPython build (no tkinter etc.).
STDLIB_MODULES = (
    "argparse asyncio.base_events asyncio.streams asyncio.tasks collections concurrent.futures configparser "
    "contextlib csv dataclasses datetime decimal difflib email.message email.utils enum fractions ftplib "
    "functools gettext heapq hmac html.parser http.client http.cookiejar http.server imaplib inspect ipaddress "
    "json logging logging.handlers mailbox multiprocessing.pool optparse pathlib pickle pdb platform poplib "
    "pprint pydoc queue random re shutil smtplib socket socketserver sqlite3 statistics string subprocess "
    "tarfile tempfile textwrap threading tokenize traceback typing unittest.case unittest.mock urllib.parse "
    "urllib.request uuid warnings weakref xml.dom.minidom xml.etree.ElementTree zipfile"
).split()

MAX_SENTENCE_CHARS = 400


def _docstrings(module) -> list[str]:
    docs = [inspect.getdoc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            docs += [inspect.getdoc(m) for n, m in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isfunction(m)]
    return [d for d in docs if d]


def stdlib_text() -> str:
    from pydoc_data.topics import topics

    parts = [topics[k] for k in sorted(topics)]
    for name in STDLIB_MODULES:
        try:
            parts += _docstrings(importlib.import_module(name))
        except ImportError:  # a stripped-down CPython build; the rest is plenty
            continue
    return "\n\n".join(parts)


def read_text_source(source: str | Path) -> str:
    if str(source) == STDLIB:
        return stdlib_text()
    path = Path(source)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"haystack directory {path} contains no .txt files")
    else:
        raise FileNotFoundError(f"haystack source {source!r} is neither '{STDLIB}' nor an existing file or directory")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def split_sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences; over-long ones (code listings) are cut at spaces."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])", paragraph):
            while len(sentence) > MAX_SENTENCE_CHARS:
                cut = sentence.rfind(" ", 0, MAX_SENTENCE_CHARS)
                cut = cut if cut > 0 else MAX_SENTENCE_CHARS
                sentences.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if sentence:
                sentences.append(sentence)
    return sentences


class Haystack:
    """Sentences of a text source plus their token counts under one tokenizer."""

    def __init__(self, source: str | Path, tokenizer):
        text = read_text_source(source)
        self.source = str(source)
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        self.sentences = split_sentences(text)
        if not self.sentences:
            raise ValueError(f"haystack source {source!r} contains no text")
        encoded = tokenizer([" " + s for s in self.sentences], add_special_tokens=False)["input_ids"]
        self.token_counts = [len(ids) for ids in encoded]
        self.total_tokens = sum(self.token_counts)

    def take(self, num_tokens: int, start: int) -> list[str]:
        """Consecutive sentences from ``start`` (wrapping around) holding at most ``num_tokens``."""
        out, used, i = [], 0, start % len(self.sentences)
        while used + self.token_counts[i] <= num_tokens:
            out.append(self.sentences[i])
            used += self.token_counts[i]
            i = (i + 1) % len(self.sentences)
            if len(out) > 100 * len(self.sentences):  # only all-empty sentences could get here
                break
        return out


@lru_cache(maxsize=4)
def get_haystack(source: str, tokenizer) -> Haystack:
    """One Haystack per (source, tokenizer object): counting the tokens of 1 MB takes seconds."""
    return Haystack(source, tokenizer)
