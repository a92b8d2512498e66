#!/usr/bin/env python
"""Megatron checkpoint (any TP/CP/DP layout) -> HF Llama directory, streamed.

    python tools/convert_megatron_to_hf.py checkpoints/prolong_stage1_64k runs/hf/stage1 \
        --tokenizer /models/Meta-Llama-3-8B-Instruct

The HF config carries the trained RoPE theta, llama3 scaling and context length. See docs/convert.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.convert.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
