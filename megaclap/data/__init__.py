"""Data pipeline: Megatron `.bin/.idx` corpora, GPT samples, and few-epoch/online/lazy samplers.

See docs/INTERFACES.md ("Data -> training") and DESIGN.md section 5; the data flags
(DataConfig) are megaclap/config/data.py. The exports below are resolved on first use
(PEP 562), so tools that only need the numpy parts (indexed_dataset, tokenizers) do not
import torch.
"""

_EXPORTS = {
    "build_data_sources": "builder", "GlobalBatch": "builder", "BatchSource": "builder",
    "DataSources": "builder", "DataExhausted": "samplers",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
