"""Build a miniature ProLong-like corpus from Debian text packages (tests, quickstart, benchmark).

Sources (nothing comes from a model or dataset hub):
  tokenizer      Llama-3's tiktoken file from Meta's llama-models    (the data extra: pip install -e ".[data]")
  code repos     folders of the Python standard library, one repository each, plus one of its
                 top-level modules (~1.1M tokens; --small: ~550K)
  books          the King James Bible (bible-kjv, ~1.14M tokens; --small: ~550K) and GCIDE
                 (dict-gcide) cut into volumes of 5K-650K tokens   (apt-get install bible-kjv dict-gcide)
  short text     fortunes, package READMEs and copyright files, split into the eight ShortMix
                 domains                                           (apt-get install fortunes)
  chat           conversations made from GCIDE: a user asks what words mean, the assistant answers
                 with their dictionary entries (the stand-in for UltraChat)

Layout under --out (PROLONG_DATA=--out runs the real recipes; PROLONG_MINI_DATA=--out the
recipes/tiny/*_corpus.yaml ones):
  stage1/  code_repos_64k books_64k + ShortMix        stage2/  code_repos_{512k,64k_512k} books_{512k,64k_512k} + ShortMix
  sft/ultrachat                                       tiny/    the long domains at tiny lengths (4K / 16K)
  raw/     the inputs, as tools/prepare_data.py reads them

--small builds ~1.8M tokens, every dataset non-empty, for the tests (which upsample what they
need); the default builds ~50M tokens, enough for the tiny corpus recipes as they are.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import re
import shutil
import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Iterator, List


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.data.debian_texts import apt_install, bible_text, fortune_cookies, volumes
from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare, summary_text
from megatron_ext.data.sources import SourceConfig

VERSION = 2  # bump when the layout or content changes: cached corpora are rebuilt
APT_PACKAGES = {"bible-kjv": "/usr/bin/bible", "dict-gcide": "/usr/share/dictd/gcide.dict.dz",
                "fortunes": "/usr/share/games/fortunes"}
SHORT_DOMAINS = ["textbooks", "fineweb_edu", "fineweb", "stackexchange", "wikipedia", "tulu_v2", "arxiv", "openwebmath"]
K = 1024
# (name, min, max): the real stages' long-domain buckets, and the tiny recipes' (4K / 16K).
LONG_BUCKETS = [("stage1/{d}_64k", 64 * K, None), ("stage2/{d}_64k_512k", 64 * K, 512 * K - 1),
                ("stage2/{d}_512k", 512 * K, None), ("tiny/stage1/{d}_4k", 4 * K, None),
                ("tiny/stage2/{d}_4k_16k", 4 * K, 16 * K - 1), ("tiny/stage2/{d}_16k", 16 * K, None)]
# --small: repositories of 4K-16K (json, dbm), 16K-64K (re) and 64K-512K tokens (email, asyncio),
# and top-level modules up to this many characters (~550K tokens, just over 512K).
SMALL_STDLIB = ["json", "dbm", "re", "email", "asyncio"]
SMALL_MODULE_CHARS = 2_300_000
SMALL_BIBLE_CHARS = 2_300_000
# GCIDE volumes of ~5K, 12K, 75K, 150K, 300K, 650K tokens in turn (every length class of the
# real and tiny stages), cut where a new entry starts.
VOLUME_CHARS = [20_000, 50_000] * 3 + [300_000, 600_000, 1_200_000, 2_600_000]
SMALL_VOLUME_CHARS = [20_000, 50_000] * 2 + [300_000]
CONVERSATIONS = {True: 300, False: 20_000}
SMALL_FORTUNE_FILES, SMALL_DOCS = 3, 40


def missing_sources() -> List[str]:
    missing = [f"apt:{pkg}" for pkg, path in APT_PACKAGES.items() if not Path(path).exists()]
    if importlib.util.find_spec("llama_models") is None:
        missing.append('pip:llama-models (pip install -e ".[data]")')
    return missing


def install_sources() -> None:
    """apt-get the missing Debian packages (Python packages come from the project's extras)."""
    apt = [m[4:] for m in missing_sources() if m.startswith("apt:")]
    if apt:
        apt_install(apt)


def _gcide() -> str:
    return gzip.open(APT_PACKAGES["dict-gcide"]).read().decode("utf-8", "replace")  # a few stray cp1252 bytes


def _write_repositories(raw: Path, small: bool) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    repos = raw / "repos"
    repos.mkdir(parents=True)
    packages = sorted(p for p in stdlib.iterdir() if (p / "__init__.py").exists() and p.name not in ("test", "idlelib"))
    for package in packages:
        if not small or package.name in SMALL_STDLIB:
            (repos / package.name).symlink_to(package, target_is_directory=True)
    modules = repos / "stdlib-modules"  # the top-level modules: one repository of >512K tokens
    modules.mkdir()
    chars = 0
    for module in sorted(stdlib.glob("*.py")):
        if small and chars >= SMALL_MODULE_CHARS:
            break
        shutil.copy(module, modules / module.name)
        chars += module.stat().st_size
    return repos


def _write_books(raw: Path, gcide: str, small: bool) -> Path:
    books = raw / "books"
    books.mkdir(parents=True)
    bible = bible_text()
    if small:
        bible = bible[:bible.index("\n", SMALL_BIBLE_CHARS) + 1]
    (books / "bible-kjv.txt").write_text(bible)
    sizes = SMALL_VOLUME_CHARS if small else VOLUME_CHARS
    for n, volume in enumerate(volumes(gcide, sizes, limit=len(sizes) if small else None)):
        (books / f"gcide-{n:03d}.txt").write_text(volume)
    return books


def _short_documents(small: bool) -> Iterator[tuple]:
    yield from fortune_cookies(Path(APT_PACKAGES["fortunes"]), files=SMALL_FORTUNE_FILES if small else None)
    docs = sorted(Path("/usr/share/doc").glob("*/README*")) + sorted(Path("/usr/share/doc").glob("*/copyright"))
    for path in docs[:SMALL_DOCS] if small else docs:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
        yield str(path), data.decode("utf-8", "replace")


def _write_short(raw: Path, small: bool) -> Path:
    short = raw / "short"
    short.mkdir(parents=True)
    files = {d: open(short / f"{d}.jsonl", "w") for d in SHORT_DOMAINS}
    for origin, text in _short_documents(small):
        if text.strip():
            domain = SHORT_DOMAINS[zlib.crc32(origin.encode()) % len(SHORT_DOMAINS)]
            files[domain].write(json.dumps({"text": text, "source": origin}) + "\n")
    for f in files.values():
        f.close()
    return short


def _write_conversations(raw: Path, gcide: str, count: int) -> Path:
    """UltraChat-style records: 2-5 rounds, each asking about 1-3 words, answered with their entries."""
    entries = [e for e in re.split(r"\n\n(?=\S)", gcide) if " \\" in e[:80] and not e.startswith("00")]
    path = raw / "chat.jsonl"
    with open(path, "w") as f:
        at = 0
        for i in range(count):
            messages = [{"role": "system", "content": "You are a dictionary."}] if i % 2 else []
            for _ in range(2 + i % 4):
                words = entries[at:at + 1 + at % 3]
                at = (at + len(words) * 37) % (len(entries) - 3)  # stride through the alphabet
                names = [w.split(" \\", 1)[0] for w in words]
                messages.append({"role": "user", "content": f"What do {', '.join(names)} mean?"})
                messages.append({"role": "assistant", "content": "\n\n".join(words)})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def build(out: Path, small: bool, workers: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    raw = out / "raw"
    gcide = _gcide()
    repos, books, short = _write_repositories(raw, small), _write_books(raw, gcide, small), _write_short(raw, small)
    chat = _write_conversations(raw, gcide, CONVERSATIONS[small])

    def run(source: SourceConfig, outputs: List[OutputSpec], processes: int = workers) -> dict:
        report = prepare(PrepareConfig(source=source, tokenizer="llama3", outputs=outputs, workers=processes,
                                       progress=False))
        print(summary_text(report), flush=True)
        return {Path(o["prefix"]).relative_to(out).as_posix(): {"documents": o["documents"], "tokens": o["tokens"]}
                for o in report.outputs}

    def long_buckets(domain: str) -> List[OutputSpec]:
        return [OutputSpec(str(out / name.format(d=domain)), lo, hi) for name, lo, hi in LONG_BUCKETS]

    made = {}
    made.update(run(SourceConfig([str(repos)], input_format="code-repos"), long_buckets("code_repos")))
    made.update(run(SourceConfig([str(books)]), long_buckets("books")))
    for domain in SHORT_DOMAINS:
        made.update(run(SourceConfig([str(short / f"{domain}.jsonl")]),
                        [OutputSpec(str(out / stage / domain)) for stage in ("stage1", "stage2")],
                        processes=1))  # too small to repay starting workers
    made.update(run(SourceConfig([str(chat)], chat=True), [OutputSpec(str(out / "sft" / "ultrachat"), max_tokens=64 * K)]))
    stamp = {"version": VERSION, "small": small, "datasets": made}
    (out / "CORPUS.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return stamp


def is_built(out: Path, small: bool) -> bool:
    try:
        stamp = json.loads((out / "CORPUS.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("version") == VERSION and stamp.get("small") == small


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--out", default="data/prolong_mini", help="output folder (replaced)")
    p.add_argument("--small", action="store_true", help="a ~1.8M-token subset (tests)")
    p.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    p.add_argument("--install", action="store_true", help="apt-get install the missing Debian packages first (root)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if --out already holds this corpus")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.if_missing and is_built(out, args.small):
        print(f"{out}: already built")
        return 0
    if args.install:
        install_sources()
    missing = missing_sources()
    if missing:
        print(f"error: missing source packages {', '.join(missing)}; run with --install (root) for the apt ones",
              file=sys.stderr)
        return 2
    stamp = build(out, args.small, args.workers)
    total = sum(d["tokens"] for d in stamp["datasets"].values())
    print(f"built {out}: {len(stamp['datasets'])} datasets, {total:,} tokens (datasets overlap by design)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
