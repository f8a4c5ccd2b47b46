"""Compression configuration: one dataclass, its validation, and its argparse flags."""

import argparse
from dataclasses import dataclass, field

from megaclap.flags import add_dataclass_args, from_namespace

from .channels import FC_INITS, METHODS, default_bwd_method, validate_compression


@dataclass
class CompressionConfig:
    """How pipeline-parallel p2p traffic is compressed (DESIGN.md section 4)."""

    method: str = field(default="none", metadata={"flag": "--pp-compression-method", "choices": METHODS})
    """--pp-compression-method: forward (activation) method."""

    bwd_method: str = field(default=None, metadata={"flag": "--pp-bwd-compression-method", "choices": METHODS})
    """--pp-bwd-compression-method: backward (activation-gradient) method; unset = the forward
    method, except aqsgd whose backward is direct (see `effective_bwd_method`)."""

    fwd_codec: str = field(default="identity", metadata={"flag": "--pp-fwd-codec", "metavar": "CODEC"})
    """--pp-fwd-codec: codec for activations: identity, cast:bf16|fp16, topk:R, randk:R[:scale],
    quant:B[:sr], hquant:B[:block][:sr] (0<R<=1; quant B in 2,4,8; hquant B in 2,3,4,8)."""

    bwd_codec: str = field(default="identity", metadata={"flag": "--pp-bwd-codec", "metavar": "CODEC"})
    """--pp-bwd-codec: codec for activation gradients (same choices); usually milder than the forward one."""

    clapping_fc_init: str = field(default="zero", metadata={"choices": FC_INITS})
    """--clapping-fc-init: clapping-fc reference on a fresh batch: zero (m <- 0) or previous (keep m
    from the previous batch), the paper's two rules; fresh-codec (this project's extension): send
    the fresh batch with --clapping-fresh-codec against a zero reference."""

    clapping_fresh_codec: str = field(default=None, metadata={"metavar": "CODEC"})
    """--clapping-fresh-codec: codec of Clapping's fresh steps, sent against a zero reference:
    identity = clapping-fu, the delta codec = clapping-fc (zero init), others lie between;
    unset keeps each method's own rule. Applies to every clapping-fu/fc direction."""

    aqsgd_store_dir: str = None
    """--aqsgd-store-dir: directory for AQ-SGD's per-sample store as memmap files; unset keeps
    it in device memory. Use it when N * s * h does not fit."""

    eval_with_compression: bool = False
    """--eval-with-compression: run evaluation through the compressed channels; by default
    evaluation sends uncompressed tensors and leaves channel state untouched."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the flag to change."""
        validate_compression(self.method, self.bwd_method, self.fwd_codec, self.bwd_codec,
                             self.clapping_fc_init, self.clapping_fresh_codec)

    @property
    def effective_bwd_method(self) -> str:
        return default_bwd_method(self.method) if self.bwd_method is None else self.bwd_method

    @property
    def enabled(self) -> bool:
        """True when either direction does anything other than `none`."""
        return self.method != "none" or self.effective_bwd_method != "none"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompressionConfig":
        return from_namespace(cls, args)


def add_compression_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the pipeline-compression flags, generated from CompressionConfig; returns the parser.

    Each flag's dest is the CompressionConfig field name, so `CompressionConfig.from_args(ns)`
    maps the namespace onto the dataclass (absent flags keep their defaults)."""
    add_dataclass_args(parser, CompressionConfig, "pipeline compression")
    return parser
