import torch
from transformers import LlamaConfig

from megatron_ext.eval.runtime import Runtime, bytes_per_token, choose_batch_size, choose_runtime

# SmolLM2-135M's shape.
SMOL = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)


def test_cpu_defaults():
    runtime = choose_runtime(device="cpu")
    assert (runtime.device, runtime.dtype, runtime.attn_implementation) == ("cpu", torch.float32, "sdpa")
    assert choose_batch_size(SMOL, 4096, runtime) == 1


def test_batch_shrinks_with_length_and_respects_free_memory():
    gpu = Runtime("cuda", torch.bfloat16, "sdpa")
    free = 60 * 2**30
    sizes = [choose_batch_size(SMOL, n, gpu, free_bytes=free) for n in (2048, 8192, 32768, 131072)]
    assert sizes[0] == 32 and sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    # Every chosen batch fits in 60% of free memory by our own estimate.
    for n, b in zip((2048, 8192, 32768), sizes):
        assert b * n * (bytes_per_token(SMOL, torch.bfloat16) + 2 * n) <= 0.6 * free or b == 1
    flash = Runtime("cuda", torch.bfloat16, "flash_attention_2")
    assert choose_batch_size(SMOL, 32768, flash, free_bytes=free) > sizes[2]  # no dense padding mask


def test_kv_cache_estimate_for_smollm2():
    # 30 layers x 3 KV heads x 64 dims x (K, V) x 2 bytes = 23,040 bytes per token of cache.
    assert bytes_per_token(SMOL, torch.bfloat16) - (4 * 576 + 3 * 1536) * 2 == 23040
