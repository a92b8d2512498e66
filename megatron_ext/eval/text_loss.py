"""Held-out text loss: the mean next-token loss of a causal LM on documents it never trained on.

Long-context training must not cost short-context ability. Short benchmarks (lm-eval) say
little about a small model, so the signal here is the loss on a held-out domain, compared
before and after training. Token-averaged over every predicted token of every document.
"""

from __future__ import annotations

from pathlib import Path

import torch


def read_documents(path: str | Path, text_key: str = "text") -> list[str]:
    """The documents of a .jsonl/.json/.parquet/.txt file (compressed or not), read as data
    preparation reads them; a record it would skip is an error here (the measured set must be
    the whole file)."""
    from megatron_ext.data.sources import InputError, SourceConfig, read_documents as read_source

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--loss-data {path}: no such file")
    docs = []
    try:
        for doc in read_source(SourceConfig(inputs=[str(path)], text_key=text_key)):
            if doc.skipped and doc.skipped != "empty document":
                raise ValueError(f"--loss-data {doc.origin}: {doc.skipped}")
            if doc.text and doc.text.strip():
                docs.append(doc.text)
    except InputError as e:
        raise ValueError(f"--loss-data: {e}") from None
    if not docs:
        raise ValueError(f"--loss-data {path}: no non-empty documents")
    return docs


@torch.no_grad()
def text_loss(model, tokenizer, documents: list[str], max_tokens: int = 2048, batch_size: int = 8) -> dict:
    """{"loss": mean nats per predicted token, "tokens": predicted tokens, "documents": count}.

    Each document is tokenized on its own (with the tokenizer's BOS) and cut to ``max_tokens``;
    right padding is masked out of the loss.
    """
    device = next(model.parameters()).device
    encoded = [tokenizer(d)["input_ids"][:max_tokens] for d in documents]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets, weight = ids[:, 1:], mask[:, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total += float((nll * weight).sum())
        count += int(weight.sum())
    return {"loss": total / max(count, 1), "tokens": count, "documents": len(encoded)}
