"""Prepare a domain: raw text / code repositories / chat data -> tokenized Megatron dataset(s).

Examples:
  # stage-1 books: documents of >= 64K tokens
  python tools/prepare_data.py --input raw/books --tokenizer llama3 \\
      --output-prefix data/prolong/stage1/books_64k --min-tokens 65536 --workers 8
  # one tokenization, the stage-2 buckets too
  python tools/prepare_data.py --input raw/books --tokenizer llama3 --output-prefix data/prolong/stage1/books_64k \\
      --min-tokens 65536 --bucket data/prolong/stage2/books_64k_512k:65536:524288 \\
      --bucket data/prolong/stage2/books_512k:524288
  # code repositories (one document per sub-folder)
  python tools/prepare_data.py --input raw/repos --input-format code-repos --tokenizer llama3 ...
  # SFT conversations (UltraChat messages or ShareGPT conversations), loss on assistant turns
  python tools/prepare_data.py --input ultrachat.jsonl --chat --tokenizer llama3 --max-tokens 65536 ...

Prints (and saves as <prefix>.summary.txt / <prefix>.lengths.png) documents, tokens, the
length histogram and every skipped record counted by reason with examples (file:line).
Exit codes: 0 = written; 2 = refused (bad input, or an output would be empty): nothing written;
1 = a write failed (disk full): nothing written, the message names the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.data.cli import run_tool
from megatron_ext.data.indexed import writing
from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare, summary_text
from megatron_ext.data.sources import CODE_EXTENSIONS, INPUT_FORMATS, SourceConfig
from megatron_ext.data.summary import save_length_histogram


def _bucket(text: str) -> OutputSpec:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:] if p):
        raise argparse.ArgumentTypeError(f"'{text}' is not PREFIX:MIN[:MAX]")
    return OutputSpec(parts[0], int(parts[1] or 1), int(parts[2]) if len(parts) == 3 and parts[2] else None)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--input", nargs="+", required=True, help="files or folders (folders: every file of a known suffix)")
    p.add_argument("--input-format", default="auto", choices=("auto",) + INPUT_FORMATS,
                   help="auto: by suffix (.jsonl .json .parquet .txt); code-repos: a folder of repositories")
    p.add_argument("--tokenizer", required=True,
                   help="'llama3' (llama-models' tiktoken file), a tiktoken .model file, or a Hugging Face "
                        "tokenizer directory / cached name")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin/.idx (+ .loss_mask.*, .meta.json)")
    p.add_argument("--min-tokens", type=int, default=1, help="drop shorter documents (counted)")
    p.add_argument("--max-tokens", type=int, default=None, help="drop longer documents (counted)")
    p.add_argument("--bucket", type=_bucket, action="append", default=[], metavar="PREFIX:MIN[:MAX]",
                   help="also write documents of this length range to PREFIX, in the same pass (repeatable)")
    p.add_argument("--text-key", default="text", help="jsonl/json/parquet field holding the text")
    p.add_argument("--chat", action="store_true",
                   help="records are conversations: Llama-3 chat template, loss mask on assistant tokens")
    p.add_argument("--document-separator", default=None,
                   help="plain text: regex that a separator line matches in full (e.g. '%%' for fortune files); "
                        "default: one document per file")
    p.add_argument("--code-extensions", default=",".join(CODE_EXTENSIONS),
                   help="code-repos: comma-separated file suffixes to include, or 'all'")
    p.add_argument("--file-header", default="# File: {path}\n",
                   help="code-repos: header before each file ({path}: path in the repository, {repo}: its name; \\n = newline)")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True, help="prepend BOS to each document")
    p.add_argument("--eos", action=argparse.BooleanOptionalAction, default=True, help="append EOS to each document")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    extensions = None if args.code_extensions == "all" else tuple(
        e if e.startswith(".") else f".{e}" for e in args.code_extensions.split(",") if e)
    source = SourceConfig(inputs=args.input, input_format=args.input_format, text_key=args.text_key, chat=args.chat,
                          document_separator=args.document_separator, code_extensions=extensions,
                          file_header=args.file_header.replace("\\n", "\n"))
    outputs = [OutputSpec(args.output_prefix, args.min_tokens, args.max_tokens)] + args.bucket
    cfg = PrepareConfig(source=source, tokenizer=args.tokenizer, outputs=outputs, add_bos=args.bos,
                        add_eos=args.eos, workers=args.workers, progress=not args.no_progress)

    def action() -> None:
        report = prepare(cfg)
        text = summary_text(report)
        print(text)
        with writing(args.output_prefix + ".summary.txt"):
            Path(args.output_prefix + ".summary.txt").write_text(text + "\n")
        png = args.output_prefix + ".lengths.png"
        with writing(png):
            save_length_histogram(report.lengths, png, f"{Path(args.output_prefix).name}: document lengths",
                                  [(o.min_tokens, o.max_tokens) for o in outputs])
        print(f"histogram: {png}")

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
