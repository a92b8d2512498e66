"""Chat conversations -> Llama-3 chat template -> token ids + a loss mask on assistant tokens.

Accepted records: UltraChat / OpenAI style ``{"messages": [{"role", "content"}, ...]}`` and
ShareGPT style ``{"conversations": [{"from", "value"}, ...]}``.

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


def parse_conversation(record: object) -> List[Turn]:
    """Turns of one UltraChat- or ShareGPT-style record, or BadConversation saying why not."""
    if not isinstance(record, dict):
        raise BadConversation("record is not a JSON object")
    if isinstance(record.get("messages"), list):
        raw, role_key, text_key = record["messages"], "role", "content"
    elif isinstance(record.get("conversations"), list):
        raw, role_key, text_key = record["conversations"], "from", "value"
    else:
        raise BadConversation("no 'messages' (role/content) or 'conversations' (from/value) list")
    turns = []
    for message in raw:
        if not isinstance(message, dict) or not isinstance(message.get(text_key), str):
            raise BadConversation(f"a turn has no string '{text_key}'")
        role = ROLE_ALIASES.get(str(message.get(role_key, "")).lower())
        if role is None:
            raise BadConversation(f"unknown role '{message.get(role_key)}'")
        if not message[text_key].strip():
            raise BadConversation(f"empty {role} turn")
        turns.append(Turn(role, message[text_key].strip()))
    if not any(t.role == "assistant" for t in turns):
        raise BadConversation("no assistant turn (nothing to train on)")
    return turns


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
