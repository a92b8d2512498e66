"""Recall suite without lm-eval: the same documents (recall_data) and the same scoring
(scoring), generated greedily with plain transformers. For hosts where lm-eval and its
dependency tree (datasets, pyarrow, scikit-learn...) cannot be installed."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from megatron_ext.eval.recall_data import RECALL_TASKS, DataSettings, generate_docs, join_prompt
from megatron_ext.eval.results import SampleResult
from megatron_ext.eval.scoring import recall_score


def encode(tokenizer, prompt: str) -> list[int]:
    # A chat template already wrote BOS into the text: do not add a second one.
    bos = tokenizer.bos_token
    return tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]


def format_prompt(tokenizer, doc: dict, apply_chat_template: bool) -> str:
    if not apply_chat_template:
        return join_prompt(doc["input"], doc["gen_prefix"])
    messages = [{"role": "user", "content": doc["input"]}, {"role": "assistant", "content": doc["gen_prefix"]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, desc: str = "generate") -> list[str]:
    """Greedy continuations, longest prompts first (an OOM shows up at once); halves the
    batch on CUDA out-of-memory."""
    encoded = [encode(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: dict[int, str] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    bar = tqdm(total=len(prompts), desc=desc, leave=False)
    start = 0
    while start < len(order):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding: every row ends where generation starts
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        try:
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            bar.write(f"{desc}: out of memory, retrying with batch size {batch_size}")
            continue
        for row, i in enumerate(chunk):
            outputs[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return [outputs[i] for i in range(len(prompts))]


def run_native(
    model,
    tokenizer,
    tasks: list[str],
    length: int,
    data: DataSettings,
    batch_size: int,
    limit: int | None = None,
    apply_chat_template: bool = False,
    generate: Callable[..., list[str]] = generate_greedy,
) -> tuple[dict[str, float], list[SampleResult]]:
    """Scores (task -> mean) and per-document results for one context length."""
    unknown = [t for t in tasks if t not in RECALL_TASKS]
    if unknown:
        raise ValueError(f"the native backend runs only the local recall tasks {sorted(RECALL_TASKS)}; {unknown} need lm-eval")
    scores, samples = {}, []
    for name in tasks:
        docs = generate_docs(name, tokenizer, length, data)[:limit]
        prompts = [format_prompt(tokenizer, d, apply_chat_template) for d in docs]
        predictions = generate(model, tokenizer, prompts, RECALL_TASKS[name].max_gen_toks, batch_size, desc=f"{name} @ {length}")
        results = [
            SampleResult(task=name, length=length, index=d["index"], score=recall_score(p, d["outputs"]), prediction=p, answers=d["outputs"], depth=d["depth"])
            for d, p in zip(docs, predictions)
        ]
        scores[name] = sum(r.score for r in results) / len(results)
        samples += results
    return scores, samples
