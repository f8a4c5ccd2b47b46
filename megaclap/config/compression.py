"""Compression configuration: the methods, one dataclass, its validation, and its argparse flags.

The methods themselves (Channel) are in megaclap/compression/channels.py; codec specs are checked
by the grammar in codec_spec.py.
"""

import argparse
from dataclasses import dataclass, field

from .codec_spec import parse_codec_spec
from .flags import add_dataclass_args, from_namespace

METHODS = ("none", "direct", "ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu")
FC_INITS = ("zero", "previous", "fresh-codec")  # clapping-fc's reference on a fresh batch


def default_bwd_method(fwd_method: str) -> str:
    """Backward method when none is given: AQ-SGD's original backward is `direct`."""
    return "direct" if fwd_method == "aqsgd" else fwd_method


def validate_compression(method: str, bwd_method=None, fwd_codec: str = "identity",
                         bwd_codec: str = "identity", fc_init: str = "zero", fresh_codec=None) -> None:
    """Raise ValueError (one line, naming the flag) for an invalid compression setting."""
    allowed = ", ".join(METHODS)
    if method not in METHODS:
        raise ValueError(f"--pp-compression-method {method!r} is unknown (allowed: {allowed})")
    if bwd_method is not None and bwd_method not in METHODS:
        raise ValueError(f"--pp-bwd-compression-method {bwd_method!r} is unknown (allowed: {allowed})")
    if fc_init not in FC_INITS:
        raise ValueError(f"--clapping-fc-init {fc_init!r} is unknown (allowed: {', '.join(FC_INITS)})")
    bwd = default_bwd_method(method) if bwd_method is None else bwd_method
    for meth, spec, flag, mflag in ((method, fwd_codec, "--pp-fwd-codec", "--pp-compression-method"),
                                    (bwd, bwd_codec, "--pp-bwd-codec", "--pp-bwd-compression-method")):
        codec = parse_codec_spec(spec, flag)
        if meth == "none" and codec.name != "identity":
            raise ValueError(f"{flag} {spec!r} has no effect with {mflag} none; "
                             f"pick a method such as direct or clapping-fu, or use {flag} identity")
    if fc_init == "fresh-codec" and fresh_codec is None and "clapping-fc" in (method, bwd):
        raise ValueError("--clapping-fc-init fresh-codec sends fresh steps with "
                         "--clapping-fresh-codec: give that codec (e.g. --clapping-fresh-codec hquant:4)")
    if fresh_codec is not None:
        parse_codec_spec(fresh_codec, "--clapping-fresh-codec")
        if not {method, bwd} & {"clapping-fu", "clapping-fc"}:
            raise ValueError("--clapping-fresh-codec needs --pp-compression-method (or "
                             "--pp-bwd-compression-method) clapping-fu or clapping-fc")
        if "clapping-fc" in (method, bwd) and fc_init == "previous":
            raise ValueError("--clapping-fresh-codec sends fresh steps against a zero reference: "
                             "it needs --clapping-fc-init zero or fresh-codec")


def check_fp16_recovery(method: str, bwd_method, fwd_codec: str, bwd_codec: str,
                        fc_init: str = "zero") -> None:
    """Raise ValueError (one line) for a combination an --fp16 run cannot recover from: a method
    whose residual or reference feeds back into every step without a reset (ef, ef21,
    clapping-fc with --clapping-fc-init previous) with the unbiased randk (`:scale`), whose error
    exceeds what it compresses (E||C(v) - v||^2 = (1/R - 1) ||v||^2). The state grows
    geometrically and overflows fp16 within a few steps; a skipped step's state is rolled back,
    so every later step overflows and is skipped (the loss scale falls to its floor). bf16/fp32
    diverge more slowly, until the NaN check stops the run."""
    bwd = default_bwd_method(method) if bwd_method is None else bwd_method
    for meth, spec, mflag, cflag in ((method, fwd_codec, "--pp-compression-method", "--pp-fwd-codec"),
                                     (bwd, bwd_codec, "--pp-bwd-compression-method", "--pp-bwd-codec")):
        feeds_back = meth in ("ef", "ef21") or (meth == "clapping-fc" and fc_init == "previous")
        if feeds_back and parse_codec_spec(spec, cflag).scale:
            raise ValueError(f"{mflag} {meth} with {cflag} {spec} cannot recover under --fp16: "
                             "unbiased randk's error feeds back and grows until every step overflows; "
                             "drop ':scale' or use direct / clapping-fu")


@dataclass
class CompressionConfig:
    """How pipeline-parallel p2p traffic is compressed (DESIGN.md section 4)."""

    method: str = field(default="none", metadata={"flag": "--pp-compression-method", "choices": METHODS})
    """--pp-compression-method: forward (activation) method."""

    bwd_method: str = field(default=None, metadata={"flag": "--pp-bwd-compression-method", "choices": METHODS})
    """--pp-bwd-compression-method: backward (activation-gradient) method; unset = the forward
    method, except aqsgd whose backward is direct (see `effective_bwd_method`)."""

    fwd_codec: str = field(default="identity", metadata={"flag": "--pp-fwd-codec", "metavar": "CODEC"})
    """--pp-fwd-codec: codec for activations: identity, cast:bf16|fp16, topk:R[:qB],
    randk:R[:scale][:qB], quant:B[:sr], hquant:B[:block][:sr], lowrank:R[:warm] (0<R<=1;
    quant and qB: B in 2,4,8; hquant B in 1,2,3,4,8; lowrank an integer rank)."""

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
