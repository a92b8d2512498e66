"""Checkpoint conversion between Hugging Face Llama directories and Megatron dist checkpoints.

``import_hf_checkpoint`` (HF -> Megatron) and ``export_hf_checkpoint`` (Megatron -> HF) stream
tensor by tensor; the command-line tools are tools/convert_hf_to_megatron.py and
tools/convert_megatron_to_hf.py. See docs/convert.md.

The exports are imported on first use: importing this package (e.g. for ``convert.cli``) must
not load torch, so that the tools answer ``--help`` and refuse bad input at once.
"""

from importlib import import_module

_EXPORTS = {
    "ConversionError": "megatron_ext.convert.errors",
    "ImportResult": "megatron_ext.convert.hf_to_megatron",
    "import_hf_checkpoint": "megatron_ext.convert.hf_to_megatron",
    "ExportResult": "megatron_ext.convert.megatron_to_hf",
    "export_hf_checkpoint": "megatron_ext.convert.megatron_to_hf",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
