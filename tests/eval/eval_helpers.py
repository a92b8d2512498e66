"""Helpers for the eval tests: a tiny HF Llama checkpoint, the tools/ scripts as modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TINY_MAX_POSITION = 2048
TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_tokenizer(out: Path, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from megatron_ext.eval.haystack import split_sentences, stdlib_text

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(split_sentences(stdlib_text())[:20000], trainer)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: Path, max_position_embeddings: int = TINY_MAX_POSITION) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def oracle_answer(prompt: str) -> str:
    """What a perfect reader would answer: read the asked-for key from the question and
    look its value up in the context. Covers our local tasks and RULER's needle tasks."""
    import json
    import re

    if "JSON data:\n" in prompt:
        key = re.findall(r'Key: "([^"]+)"', prompt)[-1]
        data = json.loads(prompt.split("JSON data:\n", 1)[1].split("\n\nKey:", 1)[0])
        return f' "{data[key]}"'
    key = re.findall(r"special magic \w+ for (\S+) mentioned in the (?:text above|provided text)", prompt)[-1]
    value = re.search(r"special magic \w+ for " + re.escape(key) + r" is: (\S+?)\.(?:\s|$)", prompt)
    return f" {value.group(1)}." if value else ""


def wrong_answer(prompt: str) -> str:
    return " 1234567 (a guess)"
