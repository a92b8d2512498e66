#!/usr/bin/env python
"""Build the miniature's text bundle (books, short prose, held-out domain) from Debian packages.

Run where apt works (a login node, a laptop); carry the bundle to the GPU host, which needs no
network. As root, --install fetches the packages first:

    python tools/miniature/build_texts.py miniature_texts.tar.xz --install

The bundle holds books/*.txt, short/{manuals,dictionaries,fortunes}.jsonl, heldout/devil.jsonl
and SOURCES.json (package versions and document counts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # corpus.py beside this file

from corpus import DEBIAN_PACKAGES, debian_texts  # noqa: E402

from megatron_ext.data.debian_texts import SourceMissing, apt_install  # noqa: E402


def package_versions() -> dict:
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *DEBIAN_PACKAGES],
                         capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("out", help="the bundle to write (.tar.xz)")
    p.add_argument("--install", action="store_true", help="apt-get install the packages first (root)")
    p.add_argument("--root", default="/", help="where the packages are installed (default /)")
    args = p.parse_args(argv)
    if not args.out.endswith(".tar.xz"):
        print(f"error: {args.out}: the bundle must be a .tar.xz file", file=sys.stderr)
        return 2
    if args.install:
        apt_install(list(DEBIAN_PACKAGES))
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts"
        try:
            counts = debian_texts(Path(args.root), texts)
        except SourceMissing as e:
            print(f"error: missing source {e}; install the packages {' '.join(DEBIAN_PACKAGES)} (or pass --install)",
                  file=sys.stderr)
            return 2
        (texts / "SOURCES.json").write_text(json.dumps({"packages": package_versions(), "documents": counts,
                                                        "what": DEBIAN_PACKAGES}, indent=2) + "\n")
        partial = Path(args.out + ".partial")
        with tarfile.open(partial, "w:xz", preset=9) as tar:
            tar.add(texts, arcname="texts")
        partial.replace(args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
