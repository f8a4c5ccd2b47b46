"""Compression configuration: one dataclass, its validation, and its argparse flags."""

import argparse
from dataclasses import dataclass, fields

from .channels import FC_INITS, METHODS, default_bwd_method, validate_compression
from .codecs import CODEC_HELP


@dataclass
class CompressionConfig:
    """How pipeline-parallel p2p traffic is compressed (DESIGN.md section 4)."""

    method: str = "none"
    """Forward (activation) method [--pp-compression-method]: none, direct, ef, ef21, aqsgd,
    clapping-fc, clapping-fu."""

    bwd_method: str = None
    """Backward (activation-gradient) method [--pp-bwd-compression-method]; None = the forward
    method, except aqsgd whose backward is direct (see `effective_bwd_method`)."""

    fwd_codec: str = "identity"
    """Codec for activations [--pp-fwd-codec]: identity, cast:bf16|fp16, topk:R, randk:R[:scale],
    quant:B[:sr]."""

    bwd_codec: str = "identity"
    """Codec for activation gradients [--pp-bwd-codec]; usually milder than the forward one."""

    clapping_fc_init: str = "zero"
    """clapping-fc reference on a fresh batch [--clapping-fc-init]: zero (m <- 0) or previous
    (keep m from the previous batch)."""

    clapping_fresh_codec: str = None
    """Codec of Clapping's fresh steps, sent against a zero reference [--clapping-fresh-codec]:
    identity = clapping-fu, the delta codec = clapping-fc (zero init), others lie between;
    None keeps each method's own rule. Applies to every clapping-fu/fc direction."""

    aqsgd_store_dir: str = None
    """Directory for AQ-SGD's per-sample store as memmap files [--aqsgd-store-dir]; None keeps
    it in device memory. Use it when N * s * h does not fit."""

    eval_with_compression: bool = False
    """Run evaluation through the compressed channels [--eval-with-compression]; by default
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
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_compression_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the pipeline-compression flags (values are validated by CompressionConfig).

    Each flag's dest is the CompressionConfig field name, so `CompressionConfig.from_args(ns)`
    (or any generic field-by-field fill) maps the namespace onto the dataclass."""
    g = parser.add_argument_group("pipeline compression")
    g.add_argument("--pp-compression-method", dest="method", default="none", metavar="METHOD",
                   help=f"forward p2p method: {', '.join(METHODS)} (default none)")
    g.add_argument("--pp-bwd-compression-method", dest="bwd_method", default=None, metavar="METHOD",
                   help="backward p2p method (default: the forward one; aqsgd -> direct)")
    g.add_argument("--pp-fwd-codec", dest="fwd_codec", default="identity", metavar="CODEC",
                   help=f"activation codec: {CODEC_HELP}")
    g.add_argument("--pp-bwd-codec", dest="bwd_codec", default="identity", metavar="CODEC",
                   help="activation-gradient codec (same choices)")
    g.add_argument("--clapping-fc-init", default="zero", metavar="INIT",
                   help=f"clapping-fc reference on a fresh batch: {', '.join(FC_INITS)}")
    g.add_argument("--clapping-fresh-codec", default=None, metavar="CODEC",
                   help="codec of Clapping's fresh steps against a zero reference (identity = fu, "
                        "the delta codec = fc; default: the method's own)")
    g.add_argument("--aqsgd-store-dir", default=None, help="on-disk AQ-SGD store (memmap) directory")
    g.add_argument("--eval-with-compression", action="store_true",
                   help="evaluate through the compressed channels")
    return parser
