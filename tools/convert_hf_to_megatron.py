#!/usr/bin/env python
"""HF Llama directory -> Megatron distributed checkpoint (weights only), streamed.

    python tools/convert_hf_to_megatron.py /models/Meta-Llama-3-8B-Instruct checkpoints/llama3_8b_instruct

Then train from it with checkpoint.pretrained_checkpoint=checkpoints/llama3_8b_instruct at any
TP/CP/DP layout. See docs/convert.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from megatron_ext.convert.cli import import_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(import_main())
