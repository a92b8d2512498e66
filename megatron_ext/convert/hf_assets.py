"""The non-weight files of an HF model directory: tokenizer, generation config, token ids.

A Megatron checkpoint does not hold the tokenizer, so export takes these from an HF
directory of the same model (usually the one that was imported).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from megatron_ext.convert.errors import ConversionError
from megatron_ext.convert.hf_config import special_token_ids

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
# At least one of these must exist for AutoTokenizer to build a tokenizer.
TOKENIZER_MODELS = ("tokenizer.json", "tokenizer.model", "vocab.json")
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class HFAssets:
    directory: Path
    tokenizer_files: List[Path]
    # bos/eos/pad token ids for config.json (from the directory's config.json or generation config).
    token_ids: Dict[str, object]
    generation_config: dict


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None


def read_hf_assets(directory: Path) -> HFAssets:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"tokenizer directory {directory} does not exist")
    files = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not any(path.name in TOKENIZER_MODELS for path in files):
        raise ConversionError(f"{directory} holds no tokenizer (looked for {', '.join(TOKENIZER_MODELS)}); pass the "
                              f"HF directory of the model that was imported")
    generation = _read_json(directory / GENERATION_CONFIG)
    token_ids = special_token_ids(_read_json(directory / "config.json")) or special_token_ids(generation)
    return HFAssets(directory, files, token_ids, generation or dict(token_ids))


def write_hf_assets(assets: HFAssets, output: Path) -> None:
    for path in assets.tokenizer_files:
        shutil.copy2(path, output / path.name)
    (output / GENERATION_CONFIG).write_text(json.dumps(assets.generation_config, indent=2) + "\n")
