"""The tokenizer interface: Llama-3 via tiktoken and via a Hugging Face directory agree exactly."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from megatron_ext.data.tokenizer import LLAMA3_SPECIAL_TOKENS, _pieces, llama3_tokenizer_file, load_tokenizer

MIXED = "Héllo wörld!\n\n  indented\tcode = [1, 22, 333, 4444]\r\n中文 🚀 <|begin_of_text|> 's 'll\n"


@pytest.fixture(scope="session")
def llama3_hf_dir(tmp_path_factory, llama3):
    """The same BPE as a Hugging Face fast tokenizer (transformers' tiktoken conversion)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(llama3_tokenizer_file()), extra_special_tokens=LLAMA3_SPECIAL_TOKENS).converted()
    out = tmp_path_factory.mktemp("llama3_hf")
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(out)
    return out


def test_llama3_shape(llama3):
    assert (llama3.vocab_size, llama3.bos_id, llama3.eos_id) == (128256, 128000, 128001)
    assert llama3.special_token_id("<|eot_id|>") == 128009
    with pytest.raises(ValueError, match="no special token"):
        llama3.special_token_id("<|im_start|>")


def test_special_token_text_in_a_document_stays_text(llama3):
    ids = llama3.encode("a <|eot_id|> b")
    assert 128009 not in ids and llama3.decode(ids) == "a <|eot_id|> b"


def test_long_text_is_encoded_in_pieces_without_changing_ids(llama3):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text(errors="replace") for p in sorted((stdlib / "email").glob("*.py")))
    assert len(text) > 300_000  # several pieces
    assert llama3.encode(text) == llama3._encoding.encode_ordinary(text)
    # A data table with no letter before a space (the stdlib's idna table): cut before indentation.
    table = "#" + "".join(f'    (0x{i:04X}, "M", "\u05e1\u05bc"),\n' for i in range(8000))
    assert len(_pieces(table)) > 1 and llama3.encode(table) == llama3._encoding.encode_ordinary(table)
    no_cut_point = "x" * 120_000  # cut anywhere: ids may differ at the cut, the text never does
    assert llama3.decode(llama3.encode(no_cut_point)) == no_cut_point


def test_hf_directory_gives_the_same_ids(llama3, llama3_hf_dir):
    hf = load_tokenizer(str(llama3_hf_dir))
    assert type(hf).__name__ == "HFTokenizer"
    assert hf.encode(MIXED) == llama3.encode(MIXED)
    assert (hf.vocab_size, hf.bos_id, hf.eos_id) == (llama3.vocab_size, llama3.bos_id, llama3.eos_id)
    assert hf.fingerprint() == llama3.fingerprint()
    assert hf.special_token_id("<|start_header_id|>") == 128006


def test_tiktoken_file_and_folder_specs(tmp_path, llama3):
    (tmp_path / "tokenizer.model").write_bytes(llama3_tokenizer_file().read_bytes())
    assert load_tokenizer(str(tmp_path)).encode(MIXED) == llama3.encode(MIXED)
    (tmp_path / "sentencepiece.model").write_bytes(b"\x0a\x0b\x00binary")
    with pytest.raises(ValueError, match="not a tiktoken BPE file"):
        load_tokenizer(str(tmp_path / "sentencepiece.model"))
    with pytest.raises(ValueError, match="tokenizer path not found"):
        load_tokenizer(str(tmp_path / "missing" / "tok"))
