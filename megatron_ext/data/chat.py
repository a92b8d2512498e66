"""Chat conversations -> Llama-3 chat template -> token ids + a loss mask on assistant tokens.

Accepted records: UltraChat / OpenAI style ``{"messages": [{"role", "content"}, ...]}`` and
ShareGPT style ``{"conversations": [{"from", "value"}, ...]}``. OpenAI-style list content
(``[{"type": "text", "text": ...}, ...]``) is joined as Llama-3.1's own chat template joins it:
each text part stripped, concatenated; a non-text part (an image) makes the record unusable for
a text model. Empty turns are dropped (and counted), the rest of the conversation is kept.

The template is assembled token by token rather than rendered as a string and re-tokenized,
so each id is known to belong to a header or to a message body (and message text containing
``<|eot_id|>`` stays text):

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>   (per turn)

The loss mask is 1 on an assistant turn's content and its closing ``<|eot_id|>`` (the model
must learn to stop) and 0 on headers, system and user turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from megatron_ext.data.tokenizer import Tokenizer

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
}


class BadConversation(ValueError):
    """A record that is not a usable conversation; the message is the reason it is skipped."""


@dataclass
class Turn:
    role: str  # system | user | assistant
    content: str


def _content(value: object, text_key: str) -> str:
    """A turn's text: a string, or OpenAI-style parts; None (tool-call turns) is empty."""
    if value is None or isinstance(value, str):
        return (value or "").strip()
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadConversation(f"a turn's content has a non-text part ({kind})")
            texts.append(part["text"].strip())
        return "".join(texts)
    raise BadConversation(f"a turn has no string or list '{text_key}'")


def parse_conversation(record: object) -> Tuple[List[Turn], int]:
    """(turns, empty turns dropped) of one UltraChat- or ShareGPT-style record, or
    BadConversation saying why it is unusable."""
    if not isinstance(record, dict):
        raise BadConversation("record is not a JSON object")
    if isinstance(record.get("messages"), list):
        raw, role_key, text_key = record["messages"], "role", "content"
    elif isinstance(record.get("conversations"), list):
        raw, role_key, text_key = record["conversations"], "from", "value"
    else:
        raise BadConversation("no 'messages' (role/content) or 'conversations' (from/value) list")
    turns, dropped = [], 0
    for message in raw:
        if not isinstance(message, dict) or text_key not in message:
            raise BadConversation(f"a turn has no '{text_key}'")
        role = ROLE_ALIASES.get(str(message.get(role_key, "")).lower())
        if role is None:
            raise BadConversation(f"unknown role '{message.get(role_key)}'")
        content = _content(message[text_key], text_key)
        if content:
            turns.append(Turn(role, content))
        else:
            dropped += 1
    if not any(t.role == "assistant" for t in turns):
        raise BadConversation("no assistant turn with content (nothing to train on)")
    return turns, dropped


def encode_conversation(turns: List[Turn], tokenizer: Tokenizer) -> Tuple[np.ndarray, np.ndarray]:
    """Llama-3 chat template ids and the assistant loss mask (uint8, same length)."""
    start, end, eot = (tokenizer.special_token_id(t) for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    newlines = tokenizer.encode("\n\n")
    ids, mask = [tokenizer.bos_id], [0]
    for turn in turns:
        header = [start, *tokenizer.encode(turn.role), end, *newlines]
        body = [*tokenizer.encode(turn.content), eot]
        ids += header + body
        mask += [0] * len(header) + [int(turn.role == "assistant")] * len(body)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)
