"""The codec spec grammar of --pp-fwd-codec, --pp-bwd-codec and --clapping-fresh-codec.

A spec is checked here, when the command line is parsed, without building anything (no torch);
megaclap.compression.codecs.parse_codec turns the CodecSpec into its Codec. A new codec adds its
grammar here (and to CODEC_HELP) and its class in megaclap/compression/.

    identity                 no change
    cast:bf16|fp16           plain down-cast
    topk:R                   the ceil(R * len) largest magnitudes per chunk   0 < R <= 1
    randk:R[:scale]          seeded random positions (scale: times 1/R)       0 < R <= 1
    quant:B[:sr]             per-channel absmax B-bit codes                   B in 2, 4, 8
    hquant:B[:block][:sr]    randomized Hadamard blocks, B-bit codes          B in 2, 3, 4, 8;
                                                                              block a power of 2
"""
from __future__ import annotations

from dataclasses import dataclass

CODEC_HELP = ("identity, cast:bf16, cast:fp16, topk:R, randk:R[:scale], quant:B[:sr] (0<R<=1, B in 2,4,8), "
              "hquant:B[:block][:sr] (B in 2,3,4,8; megaclap/compression/hquant.py)")
CAST_TARGETS = ("bf16", "fp16")
HQUANT_BITS = (2, 3, 4, 8)
DEFAULT_BLOCK = 64


@dataclass(frozen=True)
class CodecSpec:
    """A parsed spec: the codec's name and its parameters (unused ones keep their defaults)."""

    name: str                 # identity, cast, topk, randk, quant, hquant
    target: str = ""          # cast: bf16 or fp16
    ratio: float = 1.0        # topk, randk: R
    scale: bool = False       # randk: rescale kept values by 1/R
    bits: int = 0             # quant, hquant: B
    block: int = 0            # hquant: rotation block
    stochastic: bool = False  # quant, hquant: stochastic rounding (:sr)


def _parse_ratio(text: str, spec: str, flag: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = float("nan")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"{flag} {spec!r}: the ratio R must satisfy 0 < R <= 1 (allowed: {CODEC_HELP})")
    return ratio


def _parse_hquant(spec: str, args: list, flag: str) -> CodecSpec:
    """hquant:B[:block][:sr]; ValueError naming `flag` otherwise."""
    def bad(why):
        return ValueError(f"{flag} {spec!r}: {why} (allowed: {CODEC_HELP})")
    if not args or args[0] not in {str(b) for b in HQUANT_BITS}:
        raise bad("hquant bits B must be 2, 3, 4 or 8")
    rest, stochastic = list(args[1:]), False
    if rest and rest[-1] == "sr":
        rest, stochastic = rest[:-1], True
    block = DEFAULT_BLOCK
    if rest:
        if len(rest) > 1 or not rest[0].isdigit() or int(rest[0]) < 2 or int(rest[0]) & (int(rest[0]) - 1):
            raise bad("hquant block must be a power of two >= 2, e.g. hquant:4:64 or hquant:4:128:sr")
        block = int(rest[0])
    return CodecSpec("hquant", bits=int(args[0]), block=block, stochastic=stochastic)


def parse_codec_spec(spec: str, flag: str = "--pp-fwd-codec/--pp-bwd-codec") -> CodecSpec:
    """Parse a codec spec string; raise ValueError naming `flag` and the allowed values."""
    parts = str(spec).strip().lower().split(":")
    name, args = parts[0], parts[1:]
    if name == "identity" and not args:
        return CodecSpec("identity")
    if name == "cast" and len(args) == 1 and args[0] in CAST_TARGETS:
        return CodecSpec("cast", target=args[0])
    if name == "topk" and len(args) == 1:
        return CodecSpec("topk", ratio=_parse_ratio(args[0], spec, flag))
    if name == "randk" and len(args) in (1, 2) and args[1:] in ([], ["scale"]):
        return CodecSpec("randk", ratio=_parse_ratio(args[0], spec, flag), scale=len(args) == 2)
    if name == "quant" and len(args) in (1, 2) and args[1:] in ([], ["sr"]):
        if args[0] not in ("2", "4", "8"):
            raise ValueError(f"{flag} {spec!r}: quant bits B must be 2, 4 or 8 (allowed: {CODEC_HELP})")
        return CodecSpec("quant", bits=int(args[0]), stochastic=len(args) == 2)
    if name == "hquant":
        return _parse_hquant(spec, args, flag)
    raise ValueError(f"{flag} {spec!r}: unknown codec (allowed: {CODEC_HELP})")
