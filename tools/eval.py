#!/usr/bin/env python
"""Evaluate an exported HF checkpoint across context lengths.

    python tools/eval.py CHECKPOINT_DIR --lengths 8K,16K,32K,64K,128K --out runs/eval/stage1

Writes OUT/results.json, samples.jsonl, results.md, needle_heatmap.png and
score_vs_length.png, and prints the table. Runs offline by default; see docs/eval.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_length(text: str) -> int:
    from megatron_ext.eval.report import parse_length as parse

    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    from megatron_ext.eval.harness import DEFAULT_TASKS
    from megatron_ext.eval.recall_data import DEFAULT_DEPTHS, DataSettings
    from megatron_ext.eval.short import SHORT_TASKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="HF checkpoint directory (config.json, weights, tokenizer)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--lengths", default="4K,8K,16K,32K", help="comma-separated context lengths, e.g. 8K,16K,128K (default %(default)s); 'none': only --loss-data")
    p.add_argument("--tasks", help=f"comma-separated recall tasks (default: all offline ones: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--limit", type=int, default=100, help="at most this many documents per task and length (default %(default)s, as HELMET; 0: all, RULER has 500)")
    p.add_argument("--samples", type=int, default=DataSettings.num_samples, help="documents generated per local task and length (default %(default)s)")
    p.add_argument("--depths", default=",".join(f"{d:g}" for d in DEFAULT_DEPTHS), help="needle depths in percent (default %(default)s)")
    p.add_argument("--haystack", default="stdlib", help="haystack text: 'stdlib' (CPython's own docs) or a .txt file or directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "lm-eval", "native"], help="lm-eval harness, or plain transformers generation on the same data (default: lm-eval when installed)")
    p.add_argument("--batch-size", type=int, help="default: as many sequences as fit in 60%% of free GPU memory, per length")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--attn-implementation", default="auto", help="auto (flash_attention_2 if installed, else sdpa), sdpa, eager, flash_attention_2")
    p.add_argument("--allow-beyond-max-position", action="store_true", help="evaluate lengths above the model's max_position_embeddings (extrapolation)")
    p.add_argument("--tokenizer", help="tokenizer directory, if not in the checkpoint")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template (instruct models)")
    p.add_argument("--short-tasks", default=",".join(SHORT_TASKS), help="lm-eval short-context tasks, run when their data loads; 'none' to skip (default %(default)s)")
    p.add_argument("--short-limit", type=int, help="documents per short-context task")
    p.add_argument("--include-path", action="append", default=[], help="extra lm-eval task directory (repeatable), e.g. for tasks on local data")
    p.add_argument("--helmet-dir", help="HELMET checkout: also run HELMET's own eval.py")
    p.add_argument("--helmet-data", default="local", choices=["local", "official"], help="HELMET on our generated data (offline) or on its downloaded recall data")
    p.add_argument("--helmet-samples", type=int, default=100, help="HELMET max_test_samples")
    p.add_argument("--loss-data", action="append", default=[], metavar="FILE",
                   help="held-out text (.jsonl with a 'text' field, or .txt): report the mean next-token loss (repeatable)")
    p.add_argument("--loss-max-tokens", type=int, default=2048, help="cut each --loss-data document to this many tokens (default %(default)s)")
    p.add_argument("--loss-limit", type=int, help="at most this many documents per --loss-data file")
    p.add_argument("--online", action="store_true", help="let HF hub / datasets / NLTK use the network (default: offline)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out, skipping finished lengths")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own log messages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.online:
        from megatron_ext.eval.harness import set_offline_environment

        set_offline_environment(Path(tempfile.gettempdir()) / "megatron_ext_nltk")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # lm-eval warns about RULER's per-length placeholders on every task
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"

    from megatron_ext.eval.checkpoint import CheckpointError
    from megatron_ext.eval.recall_data import DataSettings
    from megatron_ext.eval.runner import EvalConfig, run_eval

    try:
        cfg = EvalConfig(
            checkpoint=args.checkpoint,
            out_dir=args.out,
            lengths=[] if args.lengths.strip().lower() == "none" else [parse_length(x) for x in parse_list(args.lengths)],
            tasks=parse_list(args.tasks) if args.tasks else None,
            limit=args.limit or None,
            data=DataSettings(num_samples=args.samples, depths=tuple(float(d) for d in parse_list(args.depths)), seed=args.seed, haystack=args.haystack),
            backend=args.backend,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            attn_implementation=args.attn_implementation,
            allow_beyond_max_position=args.allow_beyond_max_position,
            tokenizer=args.tokenizer,
            apply_chat_template=args.chat_template,
            short_tasks=[] if args.short_tasks.lower() == "none" else parse_list(args.short_tasks),
            short_limit=args.short_limit,
            include_paths=args.include_path,
            helmet_dir=args.helmet_dir,
            helmet_data=args.helmet_data,
            helmet_samples=args.helmet_samples,
            resume=args.resume,
            overwrite=args.overwrite,
            loss_data=args.loss_data,
            loss_max_tokens=args.loss_max_tokens,
            loss_limit=args.loss_limit,
        )
        run_eval(cfg)
    except (CheckpointError, FileNotFoundError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
