"""SFT data: UltraChat / ShareGPT conversations -> Llama-3 template, loss only on assistant tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_ext.data.chat import BadConversation, encode_conversation, parse_conversation
from megatron_ext.data.indexed import PreparedDataset
from megatron_ext.data.prepare import OutputSpec, PrepareConfig, prepare
from megatron_ext.data.sources import SourceConfig

ULTRACHAT = {"prompt": "ignored", "messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4. <|eot_id|> is just text here."},
    {"role": "user", "content": "  And 3+3?  "},
    {"role": "assistant", "content": "6"},
]}
SHAREGPT = {"id": "x", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}


def _spans(mask):
    """[start, end) runs of 1s."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_template_and_mask_decode_to_exactly_the_assistant_turns(llama3):
    ids, mask = encode_conversation(parse_conversation(ULTRACHAT)[0], llama3)
    text = llama3.decode(ids)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n4. <|eot_id|> is just text here.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n6<|eot_id|>")
    assert [llama3.decode(ids[a:b]) for a, b in _spans(mask)] == [
        "4. <|eot_id|> is just text here.<|eot_id|>", "6<|eot_id|>"]
    # The ids are the rendered template tokenized whole (specials as specials), except that the
    # message's literal "<|eot_id|>" stays text.
    head, tail = text.split("4. <|eot_id|>", 1)
    rendered = lambda s: llama3._encoding.encode(s, allowed_special="all")  # noqa: E731
    assert ids.tolist() == rendered(head) + llama3.encode("4. <|eot_id|>") + rendered(tail)
    assert (ids == 128009).sum() == 5  # one real <|eot_id|> per turn


def test_sharegpt_roles_map_to_the_same_template(llama3):
    ids, mask = encode_conversation(parse_conversation(SHAREGPT)[0], llama3)
    same, _ = encode_conversation(parse_conversation({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})[0], llama3)
    assert ids.tolist() == same.tolist()
    assert llama3.decode(ids[mask == 1]) == "Hello!<|eot_id|>"


@pytest.mark.parametrize("record, reason", [
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
    ({"conversations": [{"from": "robot", "value": "beep"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, "no assistant turn"),
    ({"messages": [{"role": "user"}]}, "a turn has no 'content'"),
    ({"messages": [{"role": "user", "content": 7}]}, "no string or list 'content'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "a cat"}]}, r"non-text part \(image_url\)"),
    ({"text": "not a chat"}, "no 'messages'"),
    ([1, 2], "not a JSON object"),
])
def test_unusable_conversations_say_why(record, reason):
    with pytest.raises(BadConversation, match=reason):
        parse_conversation(record)


def test_prepared_sft_dataset_keeps_masks_and_counts_skips(tmp_path, llama3):
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [ULTRACHAT, SHAREGPT, {"messages": []}]) + "\n")
    source = SourceConfig(inputs=[str(src)], chat=True)
    report = prepare(PrepareConfig(source=source, tokenizer="llama3", outputs=[OutputSpec(str(tmp_path / "sft"))],
                                   progress=False))
    ds = PreparedDataset(str(tmp_path / "sft"))
    assert ds.loss_mask is not None and ds.meta["loss_mask"] and len(ds) == 2
    tokens, mask = ds.read(1, 0, int(ds.doc_lengths[1]))
    assert llama3.decode(tokens[mask == 1]) == "Hello!<|eot_id|>" and tokens[0] == llama3.bos_id
    assert report.skips.counts() == {"no assistant turn with content (nothing to train on)": 1}
    assert report.skips.examples("no assistant turn with content (nothing to train on)") == [f"{src}:3"]


def test_empty_turns_are_dropped_and_the_rest_of_the_conversation_kept(tmp_path, llama3):
    record = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": " "},
                           {"role": "user", "content": "q2"}, {"role": "assistant", "content": None},
                           {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]}
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(record) + "\n")
    report = prepare(PrepareConfig(source=SourceConfig(inputs=[str(src)], chat=True), tokenizer="llama3",
                                   outputs=[OutputSpec(str(tmp_path / "sft"))], progress=False))
    ds = PreparedDataset(str(tmp_path / "sft"))
    tokens, mask = ds.read(0, 0, int(ds.doc_lengths[0]))
    assert llama3.decode(tokens).count("<|start_header_id|>user") == 3 and llama3.decode(tokens[mask == 1]) == "a3<|eot_id|>"
    assert report.skips.total() == 0
    assert report.repairs.counts() == {"empty turns dropped": 2} and report.repairs.examples("empty turns dropped") == [
        f"{src}:1"]


def test_openai_list_content_is_joined_as_llama3_templates_join_it():
    turns, dropped = parse_conversation({"messages": [
        {"role": "user", "content": [{"type": "text", "text": " Look: "}, {"type": "text", "text": "what is 2+2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]})
    assert [(t.role, t.content) for t in turns] == [("user", "Look:what is 2+2?"), ("assistant", "4")] and dropped == 0
