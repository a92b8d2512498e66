"""Import mosaic-streaming MDS shards (e.g. the released ProLong data) as Megatron datasets.

Examples:
  python tools/import_mds.py --input prolong-data-64K/books --output-prefix data/prolong/stage1/books_64k
  # one dataset per value of the 'domain' field, under data/prolong/stage1/<domain>
  python tools/import_mds.py --input prolong-data-64K --output-prefix data/prolong/stage1 --split-by-domain
  # SFT shards: the 'mask' column becomes the loss mask
  python tools/import_mds.py --input prolong-ultrachat-64K --output-prefix data/prolong/sft/ultrachat --tokenizer llama3

Document boundaries ('indices' spans) and SFT masks are kept; inconsistent samples are
skipped and counted with their shard and position; a corrupt shard stops the import, naming it.
Exit codes: 0 = imported; 2 = refused (nothing written); 1 = a write failed (disk full).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.data.cli import run_tool
from megatron_ext.data.indexed import writing
from megatron_ext.data.mds import import_mds
from megatron_ext.data.summary import length_histogram, save_length_histogram
from megatron_ext.data.tokenizer import load_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--input", required=True, help="an MDS folder (index.json + shards) or a tree of them")
    p.add_argument("--output-prefix", required=True, help="dataset prefix, or a folder with --split-by-domain")
    p.add_argument("--split-by-domain", action="store_true", help="one dataset per value of the 'domain' field")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer the shards were made with (ProLong: llama3); recorded in the metadata and "
                        "used to refuse token ids outside its vocabulary")
    args = p.parse_args(argv)

    def action() -> None:
        tokenizer = load_tokenizer(args.tokenizer).describe() if args.tokenizer else None
        report = import_mds(args.input, args.output_prefix, args.split_by_domain, tokenizer)
        print(f"read {report.samples:,} MDS samples; {report.tokens_outside_documents:,} tokens outside any document span")
        for out in report.outputs:
            print(f"wrote {out['prefix']}: {out['documents']:,} documents, {out['tokens']:,} tokens"
                  f"{' + loss mask' if out['loss_mask'] else ''}")
        print("\n".join(report.skips.lines() + ["document lengths (tokens):"] + length_histogram(report.lengths)))
        png = str(Path(args.output_prefix) / "lengths.png") if args.split_by_domain else args.output_prefix + ".lengths.png"
        with writing(png):
            save_length_histogram(report.lengths, png, f"{Path(args.input).name}: document lengths")
        print(f"histogram: {png}")

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
