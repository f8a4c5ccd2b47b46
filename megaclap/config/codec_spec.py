"""The codec spec grammar of --pp-fwd-codec, --pp-bwd-codec and --clapping-fresh-codec.

A spec is checked here, when the command line is parsed, without building anything (no torch);
megaclap.compression.codecs.parse_codec turns the CodecSpec into its Codec. A new codec adds its
grammar here (and to CODEC_HELP) and its class in megaclap/compression/.

    identity                  no change
    cast:bf16|fp16            plain down-cast
    topk:R[:qB]               the ceil(R * len) largest magnitudes per chunk   0 < R <= 1
    randk:R[:scale][:qB]      seeded random positions (scale: times 1/R)       0 < R <= 1
                              (:qB: kept values quantised to B bits, B in 2, 4, 8)
    quant:B[:sr]              per-channel absmax B-bit codes                   B in 2, 4, 8
    hquant:B[:block][:sr]     randomized Hadamard blocks, B-bit codes          B in 1, 2, 3, 4, 8;
                                                                               block a power of 2
                                                                               from 2 to 4096
    lowrank:R[:warm]          rank-R factors (one power iteration)             integer R >= 1
"""
from __future__ import annotations

from dataclasses import dataclass

CODEC_HELP = ("identity, cast:bf16, cast:fp16, topk:R[:qB], randk:R[:scale][:qB], quant:B[:sr] "
              "(0<R<=1, B in 2,4,8), hquant:B[:block][:sr] (B in 1,2,3,4,8), lowrank:R[:warm] (R>=1)")
CAST_TARGETS = ("bf16", "fp16")
QUANT_BITS = (2, 4, 8)  # quant:B and the sparse codecs' :qB
HQUANT_BITS = (1, 2, 3, 4, 8)
DEFAULT_BLOCK, MAX_BLOCK = 64, 4096


@dataclass(frozen=True)
class CodecSpec:
    """A parsed spec: the codec's name and its parameters (unused ones keep their defaults)."""

    name: str                 # identity, cast, topk, randk, quant, hquant, lowrank
    target: str = ""          # cast: bf16 or fp16
    ratio: float = 1.0        # topk, randk: R
    scale: bool = False       # randk: rescale kept values by 1/R
    bits: int = 0             # quant, hquant: B; topk, randk: bits of the kept values (0: as is)
    block: int = 0            # hquant: rotation block
    stochastic: bool = False  # quant, hquant: stochastic rounding (:sr)
    rank: int = 0             # lowrank: R
    warm: bool = False        # lowrank: start from the channel's previous factor


def _bad(spec: str, flag: str, why: str) -> ValueError:
    return ValueError(f"{flag} {spec!r}: {why} (allowed: {CODEC_HELP})")


def _parse_ratio(text: str, spec: str, flag: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = float("nan")
    if not 0.0 < ratio <= 1.0:
        raise _bad(spec, flag, "the ratio R must satisfy 0 < R <= 1")
    return ratio


def _parse_sparse(name: str, spec: str, args: list, flag: str) -> CodecSpec:
    """topk:R[:qB] and randk:R[:scale][:qB]."""
    rest, bits = list(args[1:]), 0
    if rest and rest[-1].startswith("q"):
        if rest[-1][1:] not in {str(b) for b in QUANT_BITS}:
            raise _bad(spec, flag, "the kept values' bits :qB must be q2, q4 or q8")
        rest, bits = rest[:-1], int(rest[-1][1:])
    scale = name == "randk" and rest == ["scale"]
    if rest and not scale:
        raise _bad(spec, flag, "unknown codec")
    return CodecSpec(name, ratio=_parse_ratio(args[0], spec, flag), scale=scale, bits=bits)


def _parse_hquant(spec: str, args: list, flag: str) -> CodecSpec:
    """hquant:B[:block][:sr]; ValueError naming `flag` otherwise."""
    if not args or args[0] not in {str(b) for b in HQUANT_BITS}:
        raise _bad(spec, flag, "hquant bits B must be 1, 2, 3, 4 or 8")
    rest, stochastic = list(args[1:]), False
    if rest and rest[-1] == "sr":
        rest, stochastic = rest[:-1], True
    block = DEFAULT_BLOCK
    if rest:
        block = int(rest[0]) if len(rest) == 1 and rest[0].isdigit() else 0
        if not 2 <= block <= MAX_BLOCK or block & (block - 1):
            raise _bad(spec, flag, f"hquant block must be a power of two from 2 to {MAX_BLOCK}, "
                                   "e.g. hquant:4:64 or hquant:4:128:sr")
    return CodecSpec("hquant", bits=int(args[0]), block=block, stochastic=stochastic)


def _parse_lowrank(spec: str, args: list, flag: str) -> CodecSpec:
    """lowrank:R[:warm]."""
    if not args or not args[0].isdigit() or int(args[0]) < 1 or args[1:] not in ([], ["warm"]):
        raise _bad(spec, flag, "lowrank needs an integer rank R >= 1, e.g. lowrank:8 or "
                               "lowrank:8:warm")
    return CodecSpec("lowrank", rank=int(args[0]), warm=len(args) == 2)


def parse_codec_spec(spec: str, flag: str = "--pp-fwd-codec/--pp-bwd-codec") -> CodecSpec:
    """Parse a codec spec string; raise ValueError naming `flag` and the allowed values."""
    parts = str(spec).strip().lower().split(":")
    name, args = parts[0], parts[1:]
    if name == "identity" and not args:
        return CodecSpec("identity")
    if name == "cast" and len(args) == 1 and args[0] in CAST_TARGETS:
        return CodecSpec("cast", target=args[0])
    if name in ("topk", "randk") and args:
        return _parse_sparse(name, spec, args, flag)
    if name == "quant" and len(args) in (1, 2) and args[1:] in ([], ["sr"]):
        if args[0] not in {str(b) for b in QUANT_BITS}:
            raise _bad(spec, flag, "quant bits B must be 2, 4 or 8")
        return CodecSpec("quant", bits=int(args[0]), stochastic=len(args) == 2)
    if name == "hquant":
        return _parse_hquant(spec, args, flag)
    if name == "lowrank":
        return _parse_lowrank(spec, args, flag)
    raise _bad(spec, flag, "unknown codec")
