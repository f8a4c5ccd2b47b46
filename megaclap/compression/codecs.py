"""Codecs: a tensor <-> ONE contiguous uint8 payload.

A payload's size is a pure function of (shape, dtype, codec), so a receiver can preallocate
it without a size handshake. Every codec is stateless; the randomised ones (randk, quant with
stochastic rounding) take a per-call integer seed that sender and receiver derive alike.

Payload layouts (n = numel, D = shape[-1], s = itemsize of the tensor's dtype):

    identity      x as raw bytes                                   n * s
    cast:T        x.to(T) as raw bytes                             n * 2
    topk:R        values [k] (dtype) | in-chunk indices [k] (u16)  k * (s + 2)
                  k = sum over 65536-element chunks of ceil(R * chunk_len)
    randk:R[:scale]  values [k] (dtype); indices from the seed     k * s,  k = ceil(R * n)
                  (one position per stratum of n / k elements, in ascending order)
    quant:B[:sr]  per-channel scales [D] (fp32) | codes bit-packed 4 * D + ceil(n * B / 8)

Parts are concatenated in the order shown; each part starts at an offset that is a multiple
of its element size when the payload itself starts aligned (a caller that embeds a payload at
an odd offset still decodes correctly: unaligned parts are copied before being re-viewed).
Byte order is the platform's (little-endian on every supported CPU and GPU).
"""

import math

import torch

from megaclap.config.codec_spec import parse_codec_spec

from .base import Codec, _as_dtype, _bytes, _generator, _numel
from .hquant import HQuantCodec

CHUNK = 65536
_CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _ceil_frac(ratio: float, n: int) -> int:
    """ceil(ratio * n), robust to float noise such as 0.1 * 30 = 3.0000000000000004."""
    return min(n, math.ceil(round(ratio * n, 9)))


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


class TopKCodec(Codec):
    """Per 65536-element chunk of the flattened tensor, keep the ceil(R * len) largest |x|."""

    def __init__(self, ratio: float, spec: str):
        self.spec, self.ratio = spec, ratio

    def _split(self, n: int):
        """(full chunks, k per full chunk, remainder length, k of the remainder chunk)."""
        full, rem = divmod(n, CHUNK)
        return full, _ceil_frac(self.ratio, CHUNK), rem, _ceil_frac(self.ratio, rem)

    def num_kept(self, n: int) -> int:
        full, kf, _, kr = self._split(n)
        return full * kf + kr

    def payload_nbytes(self, shape, dtype):
        size = torch.empty((), dtype=dtype).element_size()
        return self.num_kept(_numel(shape)) * (size + 2)

    def encode(self, x, seed=0):
        flat = x.reshape(-1)  # [n]
        full, kf, rem, kr = self._split(flat.numel())
        values, indices = [], []
        if full:
            body = flat[: full * CHUNK].view(full, CHUNK)  # [full, CHUNK]
            idx = body.abs().topk(kf, dim=1, sorted=False).indices  # [full, kf]
            values.append(body.gather(1, idx).reshape(-1))
            indices.append(idx.reshape(-1))
        if rem:
            tail = flat[full * CHUNK:]  # [rem]
            idx = tail.abs().topk(kr, sorted=False).indices  # [kr]
            values.append(tail[idx])
            indices.append(idx)
        # in-chunk indices < 65536 stored as 16-bit (int16 wraps; decode masks back to u16)
        idx16 = torch.cat(indices).to(torch.int16)
        return torch.cat([_bytes(torch.cat(values)), _bytes(idx16)])

    def decode(self, payload, shape, dtype, seed=0):
        n = _numel(shape)
        full, kf, rem, kr = self._split(n)
        k = full * kf + kr
        nval = k * torch.empty((), dtype=dtype).element_size()
        values = _as_dtype(payload[:nval], dtype)  # [k]
        idx = _as_dtype(payload[nval:], torch.int16).to(torch.int64) & 0xFFFF  # [k]
        chunk = (torch.arange(k, device=payload.device) // kf).clamp_(max=full)  # [k]
        idx = idx + chunk * CHUNK
        out = torch.zeros(n, dtype=dtype, device=payload.device)
        out[idx] = values  # indices are unique, so this is deterministic
        return out.reshape(shape)


class RandKCodec(Codec):
    """k = ceil(R * n) positions drawn from the shared seed; only the values travel.

    Stratified draw: the flattened tensor is cut into k strata (stratum j covers
    [floor(j n / k), floor((j+1) n / k)), 1/R elements each up to rounding) and one position is
    drawn uniformly in each, from k uniform numbers: O(k) work, positions distinct by
    construction, every element kept with probability 1/len(its stratum) ~ R. `:scale` multiplies
    each value by its stratum's length (unbiased)."""

    def __init__(self, ratio: float, scale: bool, spec: str):
        self.spec, self.ratio, self.scale = spec, ratio, scale
        self._memo = (None, None)  # last (key, (indices, stratum lengths)): the sender decodes right after encoding
        self._strata: dict = {}    # (n, device) -> (starts, lengths, lengths as float64): fixed per run

    def strata(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(first position, length) of each of the k strata, int64 [k]."""
        return self._strata_f64(n, torch.device(device))[:2]

    def _strata_f64(self, n: int, device: torch.device):
        if (n, device) not in self._strata:
            k = _ceil_frac(self.ratio, n)
            bounds = torch.arange(k + 1, dtype=torch.int64, device=device) * n // k  # [k + 1]
            lengths = bounds[1:] - bounds[:-1]
            self._strata[(n, device)] = (bounds[:-1], lengths, lengths.double())
        return self._strata[(n, device)]

    def _draw(self, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        key = (n, seed, device)
        if self._memo[0] != key:
            starts, lengths, lengths_f = self._strata_f64(n, device)
            u = torch.rand(starts.numel(), generator=_generator(device, seed), device=device, dtype=torch.float64)
            self._memo = (key, (u.mul_(lengths_f).long().add_(starts), lengths))  # u < 1: inside the stratum
        return self._memo[1]

    def indices(self, n: int, seed: int, device) -> torch.Tensor:
        """The k positions for this seed, ascending: identical on sender and receiver (same device type)."""
        return self._draw(n, seed, device)[0]

    def payload_nbytes(self, shape, dtype):
        n = _numel(shape)
        return _ceil_frac(self.ratio, n) * torch.empty((), dtype=dtype).element_size()

    def encode(self, x, seed=0):
        flat = x.reshape(-1)
        return _bytes(flat[self.indices(flat.numel(), seed, x.device)])

    def decode(self, payload, shape, dtype, seed=0):
        n = _numel(shape)
        idx, lengths = self._draw(n, seed, payload.device)
        values = _as_dtype(payload, dtype)
        if self.scale:
            values = (values.float() * lengths).to(dtype)
        out = torch.zeros(n, dtype=dtype, device=payload.device)
        out.index_copy_(0, idx, values)
        return out.reshape(shape)


class QuantCodec(Codec):
    """Symmetric B-bit quantisation with one fp32 absmax scale per channel (last dim).

    Levels are the integers -qmax..qmax with qmax = 2**(B-1) - 1 (B=2: -1, 0, 1), stored as
    q + qmax in B bits, 8 // B codes per byte, lowest bits first. Encode: absmax by two
    read-only reductions, one scale-and-round pass into a reused fp32 work tensor, then
    1-byte codes; decode: one fp32 pass (levels times scale / qmax, cast on store).
    """

    def __init__(self, bits: int, stochastic: bool, spec: str):
        self.spec, self.bits, self.stochastic = spec, bits, stochastic
        self.qmax = 2 ** (bits - 1) - 1
        self._scratch: dict = {}  # (shape, device, role) -> fp32 work tensor, reused across calls

    def _work(self, shape, device, role: str) -> torch.Tensor:
        key = (tuple(shape), device, role)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(shape, dtype=torch.float32, device=device)
        return self._scratch[key]

    @staticmethod
    def _channels(shape) -> int:
        return shape[-1] if len(shape) else 1

    def payload_nbytes(self, shape, dtype):
        return 4 * self._channels(shape) + math.ceil(_numel(shape) * self.bits / 8)

    def encode(self, x, seed=0):
        d = self._channels(x.shape)
        xs = x.reshape(-1, d)  # [rows, D]
        # [D] absmax from two read-only reductions (no |x| temporary; aminmax is slower on CPU)
        scale = torch.maximum(xs.amax(dim=0), xs.amin(dim=0).neg()).float().abs_()
        inv = torch.where(scale > 0, self.qmax / scale, torch.zeros_like(scale))
        y = torch.mul(xs, inv, out=self._work(xs.shape, x.device, "y"))  # [rows, D] fp32, the one write pass
        if self.stochastic:
            noise = torch.rand(y.shape, generator=_generator(x.device, seed), device=x.device,
                               out=self._work(xs.shape, x.device, "noise"))
            y.add_(noise).floor_().clamp_(-self.qmax, self.qmax)
        else:
            y.round_()  # |y| <= qmax already: absmax scaling
        payload = torch.empty(self.payload_nbytes(x.shape, x.dtype), dtype=torch.uint8, device=x.device)
        payload[: 4 * d] = _bytes(scale)
        if self.bits == 8:  # the codes are the payload's bytes
            payload[4 * d:].view(torch.int8).copy_(y.reshape(-1))
            payload[4 * d:].add_(self.qmax)  # q + qmax, wrapping in uint8
        else:
            self._pack(y.reshape(-1).to(torch.int8).view(torch.uint8).add_(self.qmax), payload[4 * d:])
        return payload

    def decode(self, payload, shape, dtype, seed=0):
        d, n = self._channels(shape), _numel(shape)
        scale = _as_dtype(payload[: 4 * d], torch.float32)  # [D]
        codes = self._unpack(payload[4 * d:], n)  # [n] uint8 (B=8: a view of the payload, left intact)
        q = (torch.sub(codes, self.qmax) if self.bits == 8 else codes.sub_(self.qmax)).view(torch.int8)
        out = torch.empty(shape, dtype=dtype, device=payload.device)
        torch.mul(q.view(-1, d), scale / self.qmax, out=out.view(-1, d))  # fp32 math, cast on store
        return out

    def _pack(self, codes: torch.Tensor, out: torch.Tensor) -> None:
        per = 8 // self.bits
        if per == 1:
            out.copy_(codes)
            return
        pad = (-codes.numel()) % per
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        cols = codes.view(-1, per)  # [nbytes, per]
        out.copy_(cols[:, 0])
        for j in range(1, per):  # at most 4 bit positions, each a vectorised op on bytes
            out |= cols[:, j] << (self.bits * j)

    def _unpack(self, packed: torch.Tensor, n: int) -> torch.Tensor:
        per, mask = 8 // self.bits, (1 << self.bits) - 1
        if per == 1:
            return packed[:n]
        cols = torch.empty(packed.numel(), per, dtype=torch.uint8, device=packed.device)  # [nbytes, per]
        for j in range(per):
            torch.bitwise_right_shift(packed, self.bits * j, out=cols[:, j])
        return cols.bitwise_and_(mask).view(-1)[:n]  # [n] uint8, a fresh tensor


def parse_codec(spec: str, flag: str = "--pp-fwd-codec/--pp-bwd-codec") -> Codec:
    """Build the codec a spec string names; raise ValueError naming `flag` and the allowed values
    (the grammar is megaclap/config/codec_spec.py)."""
    parsed = parse_codec_spec(spec, flag)
    if parsed.name == "identity":
        return IdentityCodec()
    if parsed.name == "cast":
        return CastCodec(parsed.target)
    if parsed.name == "topk":
        return TopKCodec(parsed.ratio, spec)
    if parsed.name == "randk":
        return RandKCodec(parsed.ratio, parsed.scale, spec)
    if parsed.name == "quant":
        return QuantCodec(parsed.bits, parsed.stochastic, spec)
    return HQuantCodec(parsed.bits, parsed.block, parsed.stochastic, str(spec).strip().lower())
