"""Data pipeline: Megatron `.bin/.idx` corpora, GPT samples, and few-epoch/online/lazy samplers.

See docs/INTERFACES.md ("Data -> training") and DESIGN.md section 5.
"""

from .builder import BatchSource, DataSources, GlobalBatch, build_data_sources
from .config import DataConfig, add_data_args
from .samplers import DataExhausted

__all__ = ["build_data_sources", "GlobalBatch", "DataExhausted", "BatchSource", "DataSources",
           "DataConfig", "add_data_args"]
