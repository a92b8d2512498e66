"""Raw documents of the miniature ProLong corpus, from sources that need no download at run time.

Two halves, because a GPU host usually has no network:
- ``debian_texts``: books, short prose and the held-out domain from Debian packages, extracted
  where apt works (``build_texts.py``) and carried to the GPU host as one compressed bundle;
- ``python_corpus``: code from the Python installation of the host itself (one package's files
  = one repository document, as ProLong concatenates repositories), single source files and
  package descriptions as short documents.

The evaluation haystack (CPython's pydoc topics and the docstrings of the stdlib modules listed
in megatron_ext.eval.haystack) is kept out of training: those modules are never collected.
Output: folders of .txt (one document per file) and .jsonl ({"text", "source"}) files that
``tools/prepare_data.py`` reads.
"""

from __future__ import annotations

import email
import json
import shutil
import zlib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Tuple

from megatron_ext.data.debian_texts import SourceMissing, bible_text, dict_entries, fortune_cookies, volumes
from megatron_ext.data.sources import CODE_EXTENSIONS
from megatron_ext.eval.haystack import STDLIB_MODULES

# Debian packages -> what they give. Books are long documents; short prose is cut per entry.
DEBIAN_PACKAGES = {
    "bible-kjv": "books: the King James Bible (through its `bible` program)",
    "dict-gcide": "books: the GNU Collaborative International Dictionary of English, cut into volumes",
    "perl-doc": "short/manuals: Perl's documentation, one .pod per document",
    "git-doc": "short/manuals: Git's documentation, one .txt per document",
    "dict-foldoc": "short/dictionaries: Free On-line Dictionary of Computing entries",
    "dict-jargon": "short/dictionaries: Jargon File entries",
    "dict-vera": "short/dictionaries: V.E.R.A. acronyms",
    "fortunes": "short/fortunes: fortune cookies",
    "dict-devil": "held out (never trained on): The Devil's Dictionary, for the short-text loss",
}
# Code repositories of the issue: ProLong's "code repos" domain from a real Python installation.
CODE_PACKAGES = ("torch", "transformers", "jax", "scipy", "sklearn", "sympy", "pandas", "numpy")
VOLUME_CHARS = 1_500_000  # GCIDE volumes of ~400K tokens: long documents, several per 32K sample chunking
HELDOUT_DOC_CHARS = 4_000  # held-out entries are grouped into documents of about this size
SINGLE_FILE_CHARS_PER_PACKAGE = 1_000_000
SINGLE_FILE_CHARS = 100_000_000  # ~26M tokens of short code; the main recipe uses ~17M
REPOSITORY_MAX_BYTES = 8_000_000
# Not the package's own code: caches, and copies of other projects (torch/include holds 40 MB of
# ATen/c10/pybind11 headers, most of them generated).
VENDORED = {"__pycache__", "include", "_vendor", "vendor", "vendored", "third_party"}


def _write_jsonl(path: Path, docs: Iterable[Tuple[str, str]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w") as f:
        for source, text in docs:
            if text.strip():
                f.write(json.dumps({"text": text, "source": source}) + "\n")
                n += 1
    return n


def _grouped(entries: Iterable[Tuple[str, str]], chars: int) -> Iterator[Tuple[str, str]]:
    group, first, size = [], None, 0
    for head, text in entries:
        first = first or head
        group.append(text.strip())
        size += len(text)
        if size >= chars:
            yield first, "\n\n".join(group)
            group, first, size = [], None, 0
    if group:
        yield first, "\n\n".join(group)


def _manuals(root: Path) -> Iterator[Tuple[str, str]]:
    pods = sorted(root.glob("usr/share/perl/*/pod/*.pod"))
    git = sorted(root.glob("usr/share/doc/git-doc/*.txt"))
    if not pods or not git:
        raise SourceMissing(f"{root}/usr/share/perl/*/pod/*.pod and {root}/usr/share/doc/git-doc/*.txt (perl-doc, git-doc)")
    for path in pods + git:
        yield str(path.relative_to(root)), path.read_text(errors="replace")


def debian_texts(root: Path, out: Path, bible_file: Path | None = None) -> Dict[str, int]:
    """Write out/books/*.txt, out/short/{manuals,dictionaries,fortunes}.jsonl, out/heldout/devil.jsonl.

    root: where the packages are installed (``/``) or extracted (``dpkg-deb -x``).
    Returns documents per output.
    """
    dictd = root / "usr/share/dictd"
    books = out / "books"
    books.mkdir(parents=True, exist_ok=True)
    bible = bible_file.read_text(errors="replace") if bible_file else bible_text(strip_references=True)
    (books / "bible-kjv.txt").write_text(bible)
    gcide = "\n\n".join(text for _, text in dict_entries(dictd / "gcide.dict.dz"))
    counts = {"books": 1}
    for i, volume in enumerate(volumes(gcide, [VOLUME_CHARS])):
        (books / f"gcide-{i:03d}.txt").write_text(volume)
        counts["books"] += 1
    dictionaries = (e for name in ("foldoc", "jargon", "vera") for e in dict_entries(dictd / f"{name}.dict.dz"))
    counts["short/dictionaries"] = _write_jsonl(out / "short/dictionaries.jsonl", dictionaries)
    counts["short/manuals"] = _write_jsonl(out / "short/manuals.jsonl", _manuals(root))
    counts["short/fortunes"] = _write_jsonl(out / "short/fortunes.jsonl", fortune_cookies(root / "usr/share/games/fortunes"))
    devil = _grouped(dict_entries(dictd / "devil.dict.dz"), HELDOUT_DOC_CHARS)
    counts["heldout/devil"] = _write_jsonl(out / "heldout/devil.jsonl", devil)
    return counts


# -- the Python installation ----------------------------------------------------------------------

def haystack_files(stdlib: Path) -> List[Path]:
    """Stdlib files whose text the evaluation haystack is made of: never trained on."""
    excluded = [stdlib / "pydoc_data"]
    for name in STDLIB_MODULES:
        path = stdlib.joinpath(*name.split("."))
        excluded += [path.with_suffix(".py"), path / "__init__.py"]
    return excluded


def _code_files(package: Path, excluded: List[Path]) -> Iterator[Path]:
    for path in sorted(package.rglob("*")):
        if (path.suffix in CODE_EXTENSIONS and path.is_file() and not path.is_symlink()
                and not VENDORED.intersection(path.relative_to(package).parts)
                and not any(path == e or e in path.parents for e in excluded)):
            yield path


def _copy_repository(files: Iterable[Path], base: Path, dest: Path) -> int:
    n = 0
    for path in files:
        target = dest / path.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        n += 1
    return n


def _copy_package(package: Path, base: Path, repos: Path, name: str | None = None) -> int:
    """A package as repositories of at most REPOSITORY_MAX_BYTES of code: a larger one is split into
    its sub-packages (recursively; torch -> torch._inductor, torch.nn...) plus its own modules. Sizes
    stay repository-like, and tokenization spreads over workers (one 60 MB transformers.models
    document kept one tokenizer process busy for a minute)."""
    name = name or package.name
    files = list(_code_files(package, []))
    if sum(f.stat().st_size for f in files) <= REPOSITORY_MAX_BYTES:
        return int(_copy_repository(files, base, repos / name) > 0)
    made = 0
    for sub in sorted(p for p in package.iterdir() if p.is_dir() and p.name not in VENDORED):
        made += _copy_package(sub, base, repos, f"{name}.{sub.name}")
    own = [p for p in sorted(package.iterdir()) if p.is_file() and p.suffix in CODE_EXTENSIONS]
    return made + int(_copy_repository(own, base, repos / name) > 0)


def _package_description(metadata: Path) -> str:
    message = email.message_from_string(metadata.read_text(errors="replace"))
    return message.get_payload() if isinstance(message.get_payload(), str) else ""


def _single_files(packages: List[Path]) -> Iterator[Tuple[str, str]]:
    """Single .py files of the packages, at most SINGLE_FILE_CHARS_PER_PACKAGE from each (no one package
    dominates) and SINGLE_FILE_CHARS in all (more than the mixture uses), packages in a fixed
    pseudo-random order so that the cut is not alphabetical."""
    total = SINGLE_FILE_CHARS
    for package in sorted(packages, key=lambda p: zlib.crc32(p.name.encode())):
        budget = SINGLE_FILE_CHARS_PER_PACKAGE
        for path in _code_files(package, []):
            if path.suffix == ".py" and min(budget, total) > 0:
                text = path.read_text(errors="replace")
                budget -= len(text)
                total -= len(text)
                yield str(path), text


def python_corpus(site_packages: List[Path], stdlib: Path, out: Path,
                  code_packages: Iterable[str] = CODE_PACKAGES) -> Dict[str, int]:
    """out/code_repos/<package>/... (a copy of each repository's source files),
    out/short/python_files.jsonl (single files of the other packages), out/short/pypi_readmes.jsonl."""
    wanted, found = set(code_packages), set()
    excluded = haystack_files(stdlib)
    repos = out / "code_repos"
    counts = {"code_repos": 0}
    for package in sorted(p for p in stdlib.iterdir() if (p / "__init__.py").is_file() and p.name not in ("test", "idlelib")):
        counts["code_repos"] += bool(_copy_repository(_code_files(package, excluded), stdlib, repos / f"stdlib-{package.name}"))
    top_level = [p for p in sorted(stdlib.glob("*.py")) if p not in excluded]
    counts["code_repos"] += bool(_copy_repository(top_level, stdlib, repos / "stdlib-modules"))
    others, metadata = [], []
    for site in site_packages:
        for entry in sorted(p for p in site.iterdir() if p.is_dir()):
            if entry.name in wanted:
                found.add(entry.name)
                counts["code_repos"] += _copy_package(entry, site, repos)
            elif entry.name.endswith(".dist-info") and (entry / "METADATA").is_file():
                metadata.append(entry / "METADATA")
            elif (entry / "__init__.py").is_file():
                others.append(entry)
    if not found:
        raise SourceMissing(f"none of the code packages {sorted(wanted)} in {[str(s) for s in site_packages]}")
    counts["short/python_files"] = _write_jsonl(out / "short/python_files.jsonl", _single_files(others))
    counts["short/pypi_readmes"] = _write_jsonl(out / "short/pypi_readmes.jsonl",
                                                ((str(m), _package_description(m)) for m in metadata))
    if wanted - found:
        print(f"note: code packages not installed here, left out: {', '.join(sorted(wanted - found))}")
    return counts
