"""Pipeline-parallel p2p compression: codecs (stateless tensor <-> uint8 payload) and
channels (the stateful methods of DESIGN.md section 4, including Clapping)."""

from .channels import (FC_INITS, METHODS, Channel, ChannelStats, default_bwd_method, step_seed,
                       validate_compression)
from .codecs import Codec, parse_codec
from .config import CompressionConfig, add_compression_args
from .store import AqsgdStore

__all__ = ["AqsgdStore", "Channel", "ChannelStats", "Codec", "CompressionConfig", "FC_INITS", "METHODS",
           "add_compression_args", "default_bwd_method", "parse_codec", "step_seed",
           "validate_compression"]
