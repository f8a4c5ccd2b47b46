"""Pipeline-parallel p2p compression: codecs (stateless tensor <-> uint8 payload) and
channels (the stateful methods of DESIGN.md section 4, including Clapping). Their configuration
(methods, codec spec grammar, flags) is megaclap/config/compression.py and codec_spec.py."""

from .channels import Channel, ChannelStats, step_seed
from .codecs import Codec, parse_codec
from .store import AqsgdStore

__all__ = ["AqsgdStore", "Channel", "ChannelStats", "Codec", "parse_codec", "step_seed"]
