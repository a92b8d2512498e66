"""Tiny random Llama checkpoints that ``transformers`` builds from configs, with tokenizers.

The conversion checks (CPU tests, tools/gpu/check_conversion.py, the memory benchmark) run on
these: they cover Llama-2 (MHA), Llama-3 (GQA 4:1), Llama-3.1 (llama3 RoPE scaling), tied
embeddings, an odd vocabulary and a head dim that is not hidden/heads, without any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

# initializer_range 0.2 (not Llama's 0.02) makes attention peaked, so that a wrong RoPE theta or
# llama3 factor moves the logits by > 1e-2 instead of hiding under an fp32 tolerance.
_COMMON = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, rms_norm_eps=1e-5, initializer_range=0.2,
               bos_token_id=1, eos_token_id=2)
# Every config keeps heads and KV heads even so that it also loads at TP=2.
TINY_CONFIGS: Dict[str, dict] = {
    # Multi-head attention, RoPE 1e4, vocabulary padded 320 -> 384.
    "llama2": dict(_COMMON, num_attention_heads=4, num_key_value_heads=4, vocab_size=320, rope_theta=10000.0,
                   max_position_embeddings=4096),
    # GQA 4:1, RoPE 5e5, untied head.
    "llama3": dict(_COMMON, num_attention_heads=8, num_key_value_heads=2, vocab_size=512, rope_theta=500000.0,
                   max_position_embeddings=8192),
    # Llama-3.1: llama3 RoPE scaling.
    "llama3_1": dict(_COMMON, num_attention_heads=8, num_key_value_heads=2, vocab_size=384, rope_theta=500000.0,
                     max_position_embeddings=16384,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    # SmolLM2-like: tied embeddings, GQA 3:1.
    "tied": dict(_COMMON, hidden_size=96, num_attention_heads=6, num_key_value_heads=2, vocab_size=256,
                 rope_theta=100000.0, max_position_embeddings=2048, tie_word_embeddings=True),
    # Odd vocabulary (301: not divisible by TP, padded to 384), head_dim 32 != hidden/heads, bf16 weights.
    "odd_vocab_bf16": dict(_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=301,
                           rope_theta=500000.0, max_position_embeddings=4096),
}


def save_word_level_tokenizer(directory: Path, vocab_size: int) -> None:
    """A tokenizer whose tokens are "t0" ... "t{vocab_size-1}" (bos t1, eos t2), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(directory)


def save_tiny_model(name: str, directory: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIGS[name]))
    if name.endswith("_bf16"):
        model = model.to(torch.bfloat16)
    model.save_pretrained(directory)
    save_word_level_tokenizer(directory, TINY_CONFIGS[name]["vocab_size"])
    return Path(directory)


def random_tokens(vocab_size: int, batch: int = 2, seq: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
