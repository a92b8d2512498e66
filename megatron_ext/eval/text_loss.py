"""Held-out text loss: the mean next-token loss of a causal LM on documents it never trained on.

Long-context training must not cost short-context ability. Short benchmarks (lm-eval) say
little about a small model, so the signal here is the loss on a held-out domain, compared
before and after training. Token-averaged over every predicted token of every document.
"""

from __future__ import annotations

from pathlib import Path

import torch

FLOAT32_ROWS = 4096
TOKENIZE_DOCUMENTS = 1024


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
def text_loss(model, tokenizer, documents: list[str], max_tokens: int = 2048, batch_tokens: int = 16384) -> dict:
    """{"loss": mean nats per predicted token, "tokens": predicted tokens, "documents": count}.

    Each document is tokenized on its own (with the tokenizer's BOS) and cut to ``max_tokens``;
    right padding is masked out of the loss. Documents are batched by length, up to
    ``batch_tokens`` padded tokens a forward pass: held-out sets are mostly short documents
    (13K fortunes), which a fixed batch of 8 took minutes of GPU time over.
    """
    device = next(model.parameters()).device
    encoded = []
    for start in range(0, len(documents), TOKENIZE_DOCUMENTS):  # cut as we go: a whole file's tokens never held
        encoded += [ids[:max_tokens] for ids in tokenizer(documents[start:start + TOKENIZE_DOCUMENTS])["input_ids"]]
    encoded = sorted((ids for ids in encoded if len(ids) >= 2), key=len, reverse=True)
    if not encoded:
        raise ValueError("held-out loss: no document of 2 or more tokens")
    total, count, start = torch.zeros((), device=device, dtype=torch.float64), 0, 0
    while start < len(encoded):
        width = len(encoded[start])  # the longest left: rows of this batch are no longer
        rows = max(1, min(batch_tokens // width, len(encoded) - start))
        chunk, start = encoded[start:start + rows], start + rows
        ids = torch.zeros((rows, width), dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = True
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits
        # Position p predicts token p + 1: the flat rows of the logits (no copy) whose next token is real.
        predicts = torch.zeros_like(mask)
        predicts[:, :-1] = mask[:, 1:]
        positions = predicts.flatten().nonzero().squeeze(1)
        flat_logits, next_tokens = logits.reshape(-1, logits.shape[-1]), ids.roll(-1, dims=1).flatten()
        for part in positions.split(FLOAT32_ROWS):  # float32 logits a slice at a time (128K vocabularies)
            total += torch.nn.functional.cross_entropy(flat_logits[part].float(), next_tokens[part], reduction="sum")
        count += len(positions)
    return {"loss": float(total) / count, "tokens": count, "documents": len(encoded)}  # one device sync, here
