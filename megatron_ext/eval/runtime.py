"""Device, dtype, attention kernel and batch size for generation at long context."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from megatron_ext.eval.checkpoint import CheckpointInfo

MAX_BATCH = 32


@dataclass
class Runtime:
    device: str
    dtype: torch.dtype
    attn_implementation: str


def choose_runtime(device: str = "auto", dtype: str = "auto", attn_implementation: str = "auto") -> Runtime:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but torch sees no GPU")
    if dtype == "auto":
        # bf16 where the GPU has it; fp32 on CPU, where bf16 matmuls are slow and fp16 unsupported.
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if attn_implementation == "auto":
        has_flash = device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None
        attn_implementation = "flash_attention_2" if has_flash and dtype != "float32" else "sdpa"
    return Runtime(device=device, dtype=getattr(torch, dtype), attn_implementation=attn_implementation)


def load_model(info: CheckpointInfo, runtime: Runtime):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": runtime.dtype, "attn_implementation": runtime.attn_implementation}
    if runtime.device == "cuda" and torch.cuda.device_count() > 1:
        # 8B at 512K needs ~64 GB of KV cache alone: spread the layers (and their cache) over all GPUs.
        return AutoModelForCausalLM.from_pretrained(info.path, device_map="auto", **kwargs).eval()
    return AutoModelForCausalLM.from_pretrained(info.path, **kwargs).to(runtime.device).eval()


def load_tokenizer(info: CheckpointInfo):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info.tokenizer_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """KV cache plus the widest per-token activation of a prefill step."""
    config = getattr(config, "text_config", config)
    element = torch.tensor([], dtype=dtype).element_size()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * element
    activations = (4 * config.hidden_size + 3 * config.intermediate_size) * element
    return kv_cache + activations


def choose_batch_size(config, length: int, runtime: Runtime, free_bytes: int | None = None) -> int:
    """Sequences of `length` tokens that fit in 60% of free GPU memory (1 on CPU, where a
    batch buys no speed)."""
    if not runtime.device.startswith("cuda"):
        return 1
    if free_bytes is None:
        device = torch.device(runtime.device)
        # Memory the caching allocator holds from the previous (shorter) length is free to us too:
        # without counting it, a 32K batch after a 16K one came out 5x smaller (3 vs 15 on an H100).
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        free_bytes = torch.cuda.mem_get_info(device)[0] + cached
    element = torch.tensor([], dtype=runtime.dtype).element_size()
    per_sequence = length * bytes_per_token(config, runtime.dtype)
    if runtime.attn_implementation == "sdpa":
        per_sequence += length * length * element  # left padding makes transformers build a dense 4D mask
    elif runtime.attn_implementation == "eager":
        per_sequence += getattr(config, "num_attention_heads", 1) * length * length * element
    return max(1, min(MAX_BATCH, int(0.6 * free_bytes // per_sequence)))
