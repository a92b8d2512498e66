"""Long-context training recipes (ProLong, Llama 2 Long) on Megatron-Core + Transformer Engine.

Transformer Engine is imported lazily (only where a GPU path needs it) so that the
configuration, data, conversion and launch logic stay importable and testable on CPUs.
"""

__version__ = "0.1.0"
