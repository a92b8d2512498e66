"""Readers for the Debian text packages that the test corpus and the miniature are built from.

Registry packages are the only text a CI machine can fetch: the King James Bible (``bible-kjv``),
dictd databases (``dict-gcide``, ``dict-foldoc``, ...), fortune cookies (``fortunes``).
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

DICTD = Path("/usr/share/dictd")
FORTUNES = Path("/usr/share/games/fortunes")
_DICT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class SourceMissing(FileNotFoundError):
    pass


def apt_install(packages: Sequence[str]) -> None:
    """apt-get install (as root), refreshing the package lists once if they are stale."""
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, stdout=subprocess.DEVNULL, env=env).returncode:
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
        subprocess.run(install, check=True, stdout=subprocess.DEVNULL, env=env)


def bible_text(strip_references: bool = False) -> str:
    """The whole King James Bible from bible-kjv's ``bible`` program, one verse per line
    ("Ge1:1 In the beginning..."), or without those references (they are not prose)."""
    if shutil.which("bible") is None:
        raise SourceMissing("the `bible` program (apt-get install bible-kjv)")
    out = subprocess.run(["bible", "-f", "Genesis 1:1-Revelation 22:21"], check=True, capture_output=True).stdout
    text = out.decode("utf-8", "replace")
    return re.sub(r"(?m)^\S+\d+:\d+ ", "", text) if strip_references else text


def volumes(text: str, sizes: Sequence[int], limit: Optional[int] = None) -> Iterator[str]:
    """``text`` cut into volumes of about ``sizes[i % len(sizes)]`` characters each, every cut
    where a paragraph (a dictionary entry) starts; at most ``limit`` volumes."""
    start, n = 0, 0
    while start < len(text) and (limit is None or n < limit):
        end = text.find("\n\n", start + sizes[n % len(sizes)])
        end = len(text) if end < 0 else end + 2
        yield text[start:end]
        start, n = end, n + 1


def fortune_cookies(directory: Path = FORTUNES, files: Optional[int] = None) -> Iterator[Tuple[str, str]]:
    """("file:index", cookie) of the fortune files (not their .dat indexes), of the first ``files``."""
    if not directory.is_dir():
        raise SourceMissing(str(directory))
    paths = sorted(p for p in directory.iterdir() if p.is_file() and not p.suffix and not p.is_symlink())
    for path in paths[:files]:
        for i, text in enumerate(path.read_bytes().decode("utf-8", "replace").split("\n%\n")):
            yield f"{path.name}:{i}", text


def _dict_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _DICT_ALPHABET.index(ch)
    return value


def dict_entries(dict_dz: Path) -> Iterator[Tuple[str, str]]:
    """(headword, entry text) of a dictd database, in index order, skipping its 00-database header.
    Several headwords can point at one entry (GCIDE: 204K index lines, 126K entries): each entry once."""
    index = dict_dz.with_name(dict_dz.name.replace(".dict.dz", ".index"))
    if not dict_dz.is_file() or not index.is_file():
        raise SourceMissing(f"{dict_dz} (and its .index)")
    data = gzip.open(dict_dz).read()
    seen = set()
    for line in index.read_text(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith(("00database", "00-database")):
            continue
        start, length = _dict_number(parts[1]), _dict_number(parts[2])
        if (start, length) not in seen:
            seen.add((start, length))
            yield parts[0], data[start:start + length].decode("utf-8", "replace")
