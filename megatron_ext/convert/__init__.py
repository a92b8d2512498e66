"""Checkpoint conversion between Hugging Face Llama directories and Megatron dist checkpoints.

``import_hf_checkpoint`` (HF -> Megatron) and ``export_hf_checkpoint`` (Megatron -> HF) stream
tensor by tensor; the command-line tools are tools/convert_hf_to_megatron.py and
tools/convert_megatron_to_hf.py. See docs/convert.md.
"""

from megatron_ext.convert.errors import ConversionError
from megatron_ext.convert.hf_to_megatron import ImportResult, import_hf_checkpoint
from megatron_ext.convert.megatron_to_hf import ExportResult, export_hf_checkpoint

__all__ = ["ConversionError", "ExportResult", "ImportResult", "export_hf_checkpoint", "import_hf_checkpoint"]
