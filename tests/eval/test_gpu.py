"""On a GPU host: memory-based batch size and batched bf16 generation agree with one-by-one."""

import pytest
import torch

from megatron_ext.eval.native import format_prompt, generate_greedy
from megatron_ext.eval.recall_data import DataSettings, generate_docs
from megatron_ext.eval.runtime import choose_batch_size, choose_runtime

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_batched_generation_on_gpu(tiny_llama, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    runtime = choose_runtime()
    assert runtime.device == "cuda" and runtime.dtype == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=runtime.dtype, attn_implementation=runtime.attn_implementation).cuda().eval()
    assert choose_batch_size(model.config, 2048, runtime) > 1
    docs = generate_docs("local_niah_single", tiny_tokenizer, 1024, DataSettings(num_samples=4))
    prompts = [format_prompt(tiny_tokenizer, d, False) for d in docs]
    assert generate_greedy(model, tiny_tokenizer, prompts, 8, batch_size=4) == generate_greedy(model, tiny_tokenizer, prompts, 8, batch_size=1)
