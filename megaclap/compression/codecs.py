"""Codecs: a tensor <-> ONE contiguous uint8 payload; parse_codec builds one from its spec.

A payload's size is a pure function of (shape, dtype, codec), so a receiver can preallocate
it without a size handshake. Every codec is stateless; the randomised ones take a per-call
integer seed that sender and receiver derive alike (shared_random.step_seed), and draw from
the counter-based hash of megaclap/compression/shared_random.py, never from a device RNG, so
both ends and every device draw the same values.

Payload layouts (n = numel, D = shape[-1], s = itemsize of the tensor's dtype):

    identity      x as raw bytes                                   n * s
    cast:T        x.to(T) as raw bytes                             n * 2
    quant:B[:sr]  per-channel scales [D] (fp32) | codes bit-packed 4 * D + ceil(n * B / 8)
    topk, randk   megaclap/compression/sparse.py (optionally with quantised values, `:qB`)
    hquant        megaclap/compression/hquant.py
    lowrank       megaclap/compression/lowrank.py

Parts are concatenated in the order shown; each part starts at an offset that is a multiple
of its element size when the payload itself starts aligned (a caller that embeds a payload at
an odd offset still decodes correctly: unaligned parts are copied before being re-viewed).
Byte order is the platform's (little-endian on every supported CPU and GPU); bit-packed codes
follow megaclap/compression/bitpack.py.
"""

import math

import torch

from megaclap.config.codec_spec import parse_codec_spec

from .base import Codec, _as_dtype, _bytes, _numel
from .bitpack import pack_bits, unpack_bits
from . import kernels
from .hquant import HQuantCodec
from .lowrank import LowRankCodec
from .shared_random import ROUNDING, chunk_size, rounding_chunks, stream_key
from .sparse import CHUNK, RandKCodec, TopKCodec

__all__ = ["CHUNK", "Codec", "parse_codec"]
_CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}


class IdentityCodec(Codec):
    spec = "identity"

    def payload_nbytes(self, shape, dtype):
        return _numel(shape) * torch.empty((), dtype=dtype).element_size()

    def encode(self, x, seed=0):
        return _bytes(x)

    def decode(self, payload, shape, dtype, seed=0):
        return _as_dtype(payload, dtype).reshape(shape).clone()

    def is_lossless(self, dtype):
        return True


class CastCodec(Codec):
    def __init__(self, target: str):
        self.spec, self.target = f"cast:{target}", _CASTS[target]

    def payload_nbytes(self, shape, dtype):
        return _numel(shape) * torch.empty((), dtype=self.target).element_size()

    def encode(self, x, seed=0):
        return _bytes(x.to(self.target))

    def decode(self, payload, shape, dtype, seed=0):
        return _as_dtype(payload, self.target).reshape(shape).to(dtype, copy=True)

    def is_lossless(self, dtype):
        return dtype == self.target


class QuantCodec(Codec):
    """Symmetric B-bit quantisation with one fp32 absmax scale per channel (last dim).

    Levels are the integers -qmax..qmax with qmax = 2**(B-1) - 1 (B=2: -1, 0, 1), stored as
    q + qmax in B bits (bitpack.py). Per element, in fp32: y = x * inv with inv = fp32(1 / scale)
    * qmax per channel (0 where the scale is 0), then q = round(y) (half to even) or, with `:sr`,
    q = clamp(floor(y + u), -qmax, qmax), u the shared hash's rounding uniform of the element's
    flat index (stream ROUNDING): unbiased, and the same payload on every device. Encode: absmax by
    two read-only reductions, then chunk by chunk (in cache on CPU) scale, round and store the
    byte codes; decode: one fp32 pass (levels times fp32(scale / qmax), cast on store). Every step
    is one IEEE operation, so the fused kernels (kernels/triton_quant.py) repeat it bit for bit.
    """

    def __init__(self, bits: int, stochastic: bool, spec: str):
        self.spec, self.bits, self.stochastic = spec, bits, stochastic
        self.qmax = 2 ** (bits - 1) - 1
        self._scratch: dict = {}  # (shape, device, role) -> work tensor, reused across calls

    def _work(self, shape, device, role: str, dtype=torch.float32) -> torch.Tensor:
        key = (tuple(shape), device, role)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(shape, dtype=dtype, device=device)
        return self._scratch[key]

    @staticmethod
    def _channels(shape) -> int:
        return shape[-1] if len(shape) else 1

    def payload_nbytes(self, shape, dtype):
        return 4 * self._channels(shape) + math.ceil(_numel(shape) * self.bits / 8)

    def encode(self, x, seed=0):
        if kernels.fusable(x):
            return kernels.load("triton_quant").encode(self, x, seed)
        d, n = self._channels(x.shape), x.numel()
        xs = x.reshape(-1, d)  # [rows, D]
        # [D] absmax from two read-only reductions (no |x| temporary; aminmax is slower on CPU)
        scale = torch.maximum(xs.amax(dim=0), xs.amin(dim=0).neg()).float().abs_()
        inv = torch.reciprocal(scale).mul_(self.qmax)  # qmax / scale, as the kernels compute it
        inv = torch.where(scale > 0, inv, torch.zeros_like(scale))
        payload = torch.empty(self.payload_nbytes(x.shape, x.dtype), dtype=torch.uint8, device=x.device)
        payload[: 4 * d] = _bytes(scale)
        if self.bits == 8:  # the codes are the payload's bytes
            self._codes(xs, inv, seed, payload[4 * d:])
        else:
            codes = self._codes(xs, inv, seed, self._work((n,), x.device, "codes", torch.uint8))
            pack_bits(codes, self.bits, out=payload[4 * d:])
        return payload

    def _codes(self, xs: torch.Tensor, inv: torch.Tensor, seed: int, codes: torch.Tensor):
        """codes [n] uint8 <- q + qmax for xs [rows, D]. Round to nearest: one pass into a
        reused fp32 work tensor. `:sr`: chunk by chunk of the flat tensor, so the fp32 work
        and the hash's uniforms stay in cache on CPU."""
        if not self.stochastic:
            y = torch.mul(xs, inv, out=self._work(xs.shape, xs.device, "y"))  # [rows, D] fp32
            codes.view(torch.int8).copy_(y.round_().view(-1))  # |y| <= qmax: absmax scaling
            return codes.add_(self.qmax)  # q + qmax, wrapping in uint8
        flat, n, d, step = xs.view(-1), xs.numel(), inv.numel(), chunk_size(xs.device)
        inv_rows = inv.repeat(-(-(min(n, step) + d) // d))  # [>= step + d]: inv_rows[i] = inv[i % d]
        work = self._work((min(n, step),), xs.device, "chunk")
        for start, v in rounding_chunks(n, stream_key(seed, ROUNDING), xs.device):
            m, col = v.numel(), start % d
            y = torch.mul(flat[start:start + m], inv_rows[col:col + m], out=work[:m])
            y.add_(v, alpha=2.0 ** -16).floor_().clamp_(-self.qmax, self.qmax)  # u exact
            codes[start:start + m].view(torch.int8).copy_(y)
        return codes.add_(self.qmax)

    def decode(self, payload, shape, dtype, seed=0):
        if kernels.fusable(payload, dtype, align=4):
            return kernels.load("triton_quant").decode(self, payload, shape, dtype)
        d, n = self._channels(shape), _numel(shape)
        scale = _as_dtype(payload[: 4 * d], torch.float32)  # [D]
        codes = unpack_bits(payload[4 * d:], self.bits, n)  # [n] uint8 (B=8: a view, left intact)
        q = (torch.sub(codes, self.qmax) if self.bits == 8 else codes.sub_(self.qmax)).view(torch.int8)
        out = torch.empty(shape, dtype=dtype, device=payload.device)
        # scale / qmax as a tensor division: IEEE on every device (CUDA divides by a Python
        # scalar as a multiply by its reciprocal, which can differ in the last bit)
        step = scale / torch.full_like(scale, self.qmax)
        torch.mul(q.view(-1, d), step, out=out.view(-1, d))  # fp32 math, cast on store
        return out


def parse_codec(spec: str, flag: str = "--pp-fwd-codec/--pp-bwd-codec") -> Codec:
    """Build the codec a spec string names; raise ValueError (one line) naming `flag` and the
    allowed values (the grammar is megaclap/config/codec_spec.py)."""
    parsed = parse_codec_spec(spec, flag)
    name, text = parsed.name, str(spec).strip().lower()
    if name == "identity":
        return IdentityCodec()
    if name == "cast":
        return CastCodec(parsed.target)
    if name == "topk":
        return TopKCodec(parsed.ratio, text, parsed.bits or None)
    if name == "randk":
        return RandKCodec(parsed.ratio, parsed.scale, text, parsed.bits or None)
    if name == "quant":
        return QuantCodec(parsed.bits, parsed.stochastic, text)
    if name == "lowrank":
        return LowRankCodec(parsed.rank, parsed.warm, text)
    return HQuantCodec(parsed.bits, parsed.block, parsed.stochastic, text)
