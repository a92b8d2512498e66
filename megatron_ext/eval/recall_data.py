"""Locally generated recall tasks: needle-in-a-haystack on local text, and JSON key-value.

Every document is sized with the model's tokenizer so that prompt + answer prefix +
``max_gen_toks`` fits in the target length, and records the depth (0 = start, 100 = end of
the context) of the needle that is asked for, for the length x depth heatmap. Documents
cycle through the depth grid, so ``--limit k * len(depths)`` still covers every depth.
The same documents feed the lm-eval tasks and the native backend.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass

from megatron_ext.eval.haystack import STDLIB, get_haystack

DEFAULT_DEPTHS = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)

ADJECTIVES = (
    "amber brave calm dusty eager faint gentle hollow icy jolly keen lively mellow nimble odd pale quiet "
    "rapid silver tidy upbeat vivid witty young zesty bold crisp dim fuzzy grand"
).split()
NOUNS = (
    "anchor badger candle dune ember falcon garnet harbor island jacket kettle lantern meadow nectar orchard "
    "pepper quarry river saddle thistle umbrella valley walnut yarrow zephyr beacon canyon"
).split()


@dataclass(frozen=True)
class RecallTask:
    name: str
    kind: str  # "niah" (needles in local text) or "json_kv"
    num_keys: int = 1  # needles with distinct keys; the question asks for one of them
    value_kind: str = "number"  # "number" (7 digits) or "uuid"
    max_gen_toks: int = 32


RECALL_TASKS = {
    t.name: t
    for t in (
        RecallTask("local_niah_single", "niah", num_keys=1, value_kind="number", max_gen_toks=32),
        RecallTask("local_niah_multikey", "niah", num_keys=4, value_kind="number", max_gen_toks=32),
        RecallTask("local_niah_uuid", "niah", num_keys=1, value_kind="uuid", max_gen_toks=64),
        RecallTask("json_kv", "json_kv", value_kind="uuid", max_gen_toks=64),
    )
}


@dataclass(frozen=True)
class DataSettings:
    num_samples: int = 55  # per task and length
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    seed: int = 0
    haystack: str = STDLIB


def join_prompt(text: str, gen_prefix: str) -> str:
    """The string the model continues: lm-eval puts one space between text and answer prefix
    unless either side already has whitespace at the seam."""
    if not text or not gen_prefix or text[-1].isspace() or gen_prefix[0].isspace():
        return text + gen_prefix
    return text + " " + gen_prefix


def random_value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value kind {kind!r}")


def random_keys(rng: random.Random, n: int) -> list[str]:
    pairs = rng.sample([(a, b) for a in ADJECTIVES for b in NOUNS], n)
    return [f"{a}-{b}" for a, b in pairs]


def count_tokens(tokenizer, text: str) -> int:
    # With special tokens: lm-eval and the native backend both prepend BOS where the tokenizer does.
    return len(tokenizer(text)["input_ids"])


class DoesNotFit(ValueError):
    pass


def _niah_prompt(task: RecallTask, context: str, key: str) -> tuple[str, str]:
    noun = task.value_kind
    opener = (
        f"A special magic {noun} is hidden in the text below. Memorize it; you will be asked for it afterwards."
        if task.num_keys == 1
        else f"Several special magic {noun}s are hidden in the text below. Memorize them; you will be asked for one afterwards."
    )
    text = f"{opener}\n{context}\nWhat is the special magic {noun} for {key} mentioned in the text above?"
    return text, f"The special magic {noun} for {key} mentioned in the text above is"


def _insert_at_depths(sentences: list[str], counts: list[int], needles: list[tuple[float, str]]) -> tuple[str, int]:
    """Join sentences with needles placed at token depths; return text and char offset of needles[0]."""
    total = sum(counts) or 1
    cumulative, boundaries = 0, [0]  # boundaries[i] = tokens before sentence i
    for c in counts:
        cumulative += c
        boundaries.append(cumulative)
    slots: dict[int, list[int]] = {}
    for j, (depth, _) in enumerate(needles):
        target = depth / 100 * total
        slot = min(range(len(boundaries)), key=lambda i: abs(boundaries[i] - target))
        slots.setdefault(slot, []).append(j)
    pieces, offset, first_offset = [], 0, -1
    for i in range(len(sentences) + 1):
        for j in slots.get(i, []):
            if j == 0:
                first_offset = offset
            pieces.append(needles[j][1])
            offset += len(needles[j][1]) + 1
        if i < len(sentences):
            pieces.append(sentences[i])
            offset += len(sentences[i]) + 1
    return " ".join(pieces), first_offset


def niah_doc(task: RecallTask, tokenizer, length: int, depth: float, rng: random.Random, haystack) -> dict:
    keys = random_keys(rng, task.num_keys)
    values = [random_value(rng, task.value_kind) for _ in keys]
    needles = [f"The special magic {task.value_kind} for {k} is: {v}." for k, v in zip(keys, values)]
    # The asked-for needle goes to `depth`; distractors anywhere.
    placed = [(depth, needles[0])] + [(rng.uniform(0, 100), n) for n in needles[1:]]

    empty_text, prefix = _niah_prompt(task, "", keys[0])
    overhead = count_tokens(tokenizer, join_prompt(empty_text, prefix)) + sum(count_tokens(tokenizer, n) for n in needles)
    budget = length - task.max_gen_toks - overhead
    start = rng.randrange(len(haystack.sentences))
    while budget > 0:
        sentences = haystack.take(budget, start)
        counts = [haystack.token_counts[(start + i) % len(haystack.sentences)] for i in range(len(sentences))]
        context, needle_offset = _insert_at_depths(sentences, counts, placed)
        text, prefix = _niah_prompt(task, context, keys[0])
        used = count_tokens(tokenizer, join_prompt(text, prefix)) + task.max_gen_toks
        if used <= length:
            return {
                "input": text,
                "gen_prefix": prefix,
                "outputs": [values[0]],
                "context": context,
                "query": keys[0],
                "depth": depth,
                "needle_offset": text.index(context) + needle_offset,
                "length": used,
            }
        budget -= used - length + 8  # sentence-wise counts underestimate joined text a little
    raise DoesNotFit(f"{task.name}: length {length} leaves no room for haystack text (prompt needs ~{overhead + task.max_gen_toks} tokens)")


def _json_kv_prompt(pairs: list[tuple[str, str]], key: str) -> tuple[str, str, str]:
    data = json.dumps(dict(pairs), indent=None)
    text = f"Extract the value that belongs to the given key in the JSON object below.\n\nJSON data:\n{data}\n\nKey: \"{key}\""
    return text, "Corresponding value:", data


def json_kv_doc(task: RecallTask, tokenizer, length: int, depth: float, rng: random.Random) -> dict:
    def pair() -> tuple[str, str]:
        return random_value(rng, "uuid"), random_value(rng, "uuid")

    sample = [pair() for _ in range(8)]
    text, prefix, _ = _json_kv_prompt(sample, sample[0][0])
    per_pair = (count_tokens(tokenizer, json.dumps(dict(sample))) - count_tokens(tokenizer, "{}")) / len(sample)
    overhead = count_tokens(tokenizer, join_prompt(text, prefix)) - per_pair * len(sample)
    n = int((length - task.max_gen_toks - overhead) / per_pair)
    while n >= 1:
        pairs = [pair() for _ in range(n)]
        asked = round(depth / 100 * (n - 1))
        key, value = pairs[asked]
        text, prefix, data = _json_kv_prompt(pairs, key)
        used = count_tokens(tokenizer, join_prompt(text, prefix)) + task.max_gen_toks
        if used <= length:
            return {
                "input": text,
                "gen_prefix": prefix,
                "outputs": [value],
                "context": data,
                "query": key,
                "depth": depth,
                "needle_offset": text.index(f'"{key}": "{value}"'),
                "length": used,
                "num_kvs": n,
            }
        n -= max(1, int((used - length) / per_pair) + 1)
    raise DoesNotFit(f"{task.name}: length {length} is too short for even one key-value pair")


def generate_docs(task: RecallTask | str, tokenizer, length: int, settings: DataSettings = DataSettings()) -> list[dict]:
    task = RECALL_TASKS[task] if isinstance(task, str) else task
    haystack = get_haystack(settings.haystack, tokenizer) if task.kind == "niah" else None
    docs = []
    for index in range(settings.num_samples):
        depth = float(settings.depths[index % len(settings.depths)])
        rng = random.Random(f"{settings.seed}:{task.name}:{length}:{index}")
        if task.kind == "niah":
            doc = niah_doc(task, tokenizer, length, depth, rng, haystack)
        else:
            doc = json_kv_doc(task, tokenizer, length, depth, rng)
        docs.append({"task": task.name, "index": index, "max_length": length, **doc})
    return docs
