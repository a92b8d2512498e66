"""One small tokenizer interface over Llama-3's tiktoken BPE file and any Hugging Face tokenizer.

Llama-3 ships a tiktoken file (``tokenizer.model``: 128,000 BPE ranks, then 256 special
tokens), which tiktoken encodes several times faster than the equivalent Hugging Face fast
tokenizer; everything else goes through ``transformers.AutoTokenizer``. Both encode plain
text only: a special-token string typed inside a document (``"<|eot_id|>"``) stays text, so
user content can never inject control tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

# Llama-3's pre-tokenizer split (part of the tokenizer format, as in its tokenizer.json).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
]
LLAMA3_SPECIAL_TOKENS = _LLAMA3_NAMED_SPECIALS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(_LLAMA3_NAMED_SPECIALS))]

# Text whose token ids identify a tokenizer across backends (tiktoken and HF give the same ids
# for the same BPE), so datasets tokenized either way can be checked for compatibility.
_PROBE = "Long-context 训练 naïve café 12345 ÷ \t\n  def f(x): return x**2  # 🚀 Ünïcödé <|eot_id|>"

# tiktoken's Rust regex can overflow its stack on very long inputs, so long texts are encoded in
# pieces cut where a token boundary is certain (see _pieces).
_MAX_PIECE_CHARS = 100_000
_CUT = re.compile(r"(?<=[^\W_])(?=\s)|(?<=\n)(?=[ \t]+\S)")


class Tokenizer(ABC):
    name: str
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]

    @abstractmethod
    def encode(self, text: str) -> List[int]:
        """Ids of plain text: no BOS/EOS added, special-token strings encoded as text."""

    def encode_array(self, text: str) -> np.ndarray:
        """encode() as an integer array, what datasets store; backends that can skip the Python
        list override it."""
        return np.asarray(self.encode(text), dtype=np.int32)

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens written out."""

    @abstractmethod
    def special_token_id(self, token: str) -> int:
        """Id of a special token such as ``<|eot_id|>``; ValueError if the tokenizer lacks it."""

    def fingerprint(self) -> str:
        probe = [self.vocab_size, self.bos_id, self.eos_id, self.encode(_PROBE)]
        return hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """What a prepared dataset records about its tokenizer."""
        return {"name": self.name, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "fingerprint": self.fingerprint()}


def _pieces(text: str) -> List[str]:
    """Cut ``text`` into <= _MAX_PIECE_CHARS pieces where a Llama-3 pre-token always ends: between
    a letter or digit and whitespace (letter and number tokens never take trailing whitespace;
    punctuation tokens may take newlines, hence not after punctuation), or between a newline and
    the indentation of a non-blank line (newline tokens end at their last newline). The pieces
    then encode to exactly the ids of the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > _MAX_PIECE_CHARS:
        end = _last_cut(text, start + _MAX_PIECE_CHARS // 2, start + _MAX_PIECE_CHARS)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _last_cut(text: str, lo: int, hi: int) -> int:
    """The last cut point in ``text[lo:hi]``, or ``hi`` if there is none (then ids may differ at
    the cut; the text never does). Searched backwards in growing windows: scanning the whole
    range with the regex cost as much CPU as tiktoken's encoding itself."""
    window = 1024
    while True:
        start = max(lo, hi - window)
        cuts = [m.start() for m in _CUT.finditer(text, start, hi)]
        if cuts:
            return cuts[-1]
        if start == lo:
            return hi
        window *= 16


class TiktokenTokenizer(Tokenizer):
    """Llama-3's BPE file (``llama3/tokenizer.model`` of Meta's ``llama-models``) via tiktoken."""

    def __init__(self, path: str | Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(path))
        self.special_tokens = {tok: len(ranks) + i for i, tok in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._encoding = tiktoken.Encoding(name=Path(path).name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                           special_tokens=self.special_tokens)
        self.name = str(path)
        self.vocab_size = len(ranks) + len(self.special_tokens)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]

    def encode(self, text: str) -> List[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        # encode_to_numpy skips building a Python list of ints and converting it (~15% of the
        # encoding time); with no special token allowed or disallowed it gives encode_ordinary's ids.
        arrays = [self._encoding.encode_to_numpy(piece, disallowed_special=()) for piece in _pieces(text)]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode([int(i) for i in ids])

    def special_token_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise ValueError(f"tokenizer {self.name} has no special token {token}")
        return self.special_tokens[token]


class HFTokenizer(Tokenizer):
    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise ValueError(f"tokenizer '{name_or_path}': not a tiktoken file, a tokenizer directory, or a "
                             f"Hugging Face tokenizer available offline ({e})") from None
        self._tok.model_max_length = 1 << 62  # documents are long on purpose: no length warnings
        # The Rust backend directly: twice as fast as the Python wrapper, and told to encode
        # special-token strings in the text as text.
        self._backend = self._tok.backend_tokenizer if self._tok.is_fast else None
        if self._backend is not None:
            self._backend.encode_special_tokens = True
        self.name = name_or_path
        self.vocab_size = len(self._tok)
        self.bos_id = self._tok.bos_token_id
        self.eos_id = self._tok.eos_token_id

    def encode(self, text: str) -> List[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def special_token_id(self, token: str) -> int:
        if token not in self._tok.get_added_vocab():
            raise ValueError(f"tokenizer {self.name} has no special token {token}")
        return self._tok.convert_tokens_to_ids(token)


def llama3_tokenizer_file() -> Path:
    """The Llama-3 BPE file that Meta's ``llama-models`` package ships."""
    from importlib.resources import files

    try:
        path = Path(str(files("llama_models") / "llama3" / "tokenizer.model"))
    except ModuleNotFoundError:
        raise ValueError("tokenizer 'llama3' needs Meta's llama-models package, part of the data extra: "
                         "pip install -e \".[data]\"") from None
    if not path.is_file():
        raise ValueError(f"llama-models is installed but has no {path}")
    return path


def _is_tiktoken_file(path: Path) -> bool:
    """tiktoken BPE files are lines of '<base64 token> <rank>' (SentencePiece .model files are binary)."""
    with open(path, "rb") as f:
        first = f.readline().split()
    return len(first) == 2 and first[1].isdigit()


def load_tokenizer(spec: str) -> Tokenizer:
    """``llama3`` | a tiktoken BPE file | a directory with tokenizer.json or a tiktoken tokenizer.model |
    a Hugging Face tokenizer name (from the local cache when offline)."""
    if spec == "llama3":
        return TiktokenTokenizer(llama3_tokenizer_file())
    path = Path(spec)
    if path.is_file():
        if not _is_tiktoken_file(path):
            raise ValueError(f"tokenizer file {path} is not a tiktoken BPE file; pass its directory for a "
                             f"Hugging Face tokenizer")
        return TiktokenTokenizer(path)
    if path.is_dir() and not (path / "tokenizer.json").exists() and (path / "tokenizer.model").is_file() \
            and _is_tiktoken_file(path / "tokenizer.model"):
        return TiktokenTokenizer(path / "tokenizer.model")
    if not path.exists() and (spec.startswith((".", "/")) or spec.count("/") > 1):
        raise ValueError(f"tokenizer path not found: {spec}")
    return HFTokenizer(spec)
