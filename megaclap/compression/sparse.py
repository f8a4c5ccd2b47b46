"""Sparse codecs: topk:R[:qB] and randk:R[:scale][:qB].

n = numel, s = itemsize of the tensor's dtype, CHUNK = 65536. The flattened tensor is cut into
chunks of CHUNK elements (the last one shorter); C = ceil(n / CHUNK) chunks.

    topk:R         per chunk, k_c = ceil(R * len_c) kept
                   values [k] (dtype) | in-chunk indices [k] (uint16)         k * (s + 2)
    topk:R:qB      scales [C] (fp32) | indices of full chunks (uint16) |
                   indices of the last, shorter chunk at w = bit_length(len - 1) bits |
                   codes [k] at B bits     4C + 2 k_full + ceil(k_last * w / 8) + ceil(k * B / 8)
    randk:R[:scale]     values [k] (dtype); positions from the seed        k * s,  k = ceil(R * n)
    randk:R[:scale]:qB  scales [C] (fp32) | codes [k] at B bits          4C + ceil(k * B / 8)

topk keeps, in each chunk, the k_c largest magnitudes (NaN counts as larger than any number).
Ties at the threshold go to the LOWEST in-chunk indices, and indices are stored ascending within
their chunk, chunk after chunk: the kept set and the payload are a function of x alone, on every
device (torch.topk's own choice among ties differs between CPU and CUDA).

randk: k strata ([floor(j n / k), floor((j+1) n / k)), j < k), one position drawn in each from
the shared hash (shared_random.below with the RANDK stream): ascending, distinct, each element
kept with probability 1 / len(its stratum) ~ R. `:scale` multiplies each value by its stratum's
length (unbiased).

`:qB` (B in 2, 4, 8) quantises the kept values as quant:B does: one fp32 absmax scale per chunk
over the values kept in that chunk (chunk = position // CHUNK), levels -qmax..qmax (qmax =
2^(B-1) - 1) by round half to even, stored as q + qmax through megaclap/compression/bitpack.py.
"""

import math

import torch

from . import kernels
from .base import Codec, _as_dtype, _bytes, _numel
from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .shared_random import RANDK, below, chunk_size, stream_key

CHUNK = 65536


def ceil_frac(ratio: float, n: int) -> int:
    """ceil(ratio * n), robust to float noise such as 0.1 * 30 = 3.0000000000000004."""
    return min(n, math.ceil(round(ratio * n, 9)))


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class _Levels:
    """B-bit symmetric quantisation of kept values with one absmax scale per chunk (`:qB`)."""

    def __init__(self, bits: int):
        self.bits, self.qmax = bits, 2 ** (bits - 1) - 1

    def nbytes(self, n: int, k: int) -> int:
        return 4 * -(-n // CHUNK) + packed_nbytes(k, self.bits)

    def encode(self, values: torch.Tensor, chunk: torch.Tensor, n: int) -> tuple:
        """(scales [C] fp32, packed codes) for values [k] whose chunks are `chunk` [k]."""
        v = values.float()
        scale = torch.zeros(-(-n // CHUNK), device=v.device)
        scale.scatter_reduce_(0, chunk, v.abs(), "amax")  # max: order-free, deterministic
        inv = torch.reciprocal(scale).mul_(self.qmax)  # qmax / scale, as the kernels compute it
        inv = torch.where(scale > 0, inv, torch.zeros_like(scale))
        codes = v.mul_(inv[chunk]).round_().add_(self.qmax).to(torch.uint8)
        return scale, pack_bits(codes, self.bits)

    def decode(self, scale: torch.Tensor, packed: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        q = unpack_bits(packed, self.bits, chunk.numel()).float().sub_(self.qmax)
        step = scale / torch.full_like(scale, self.qmax)  # IEEE on every device (codecs.QuantCodec)
        return q.mul_(step[chunk])  # fp32 [k]


class TopKCodec(Codec):
    """The ceil(R * len) largest |x| of each chunk (see the module docstring)."""

    def __init__(self, ratio: float, spec: str, bits: int = None):
        self.spec, self.ratio = spec, ratio
        self.levels = _Levels(bits) if bits else None

    def _split(self, n: int):
        """(full chunks, k per full chunk, remainder length, k of the remainder chunk)."""
        full, rem = divmod(n, CHUNK)
        return full, ceil_frac(self.ratio, CHUNK), rem, ceil_frac(self.ratio, rem)

    def num_kept(self, n: int) -> int:
        full, kf, _, kr = self._split(n)
        return full * kf + kr

    def _index_nbytes(self, n: int) -> tuple:
        """(bytes of full-chunk indices, bytes of last-chunk indices, last-chunk index width)."""
        full, kf, rem, kr = self._split(n)
        if self.levels is None:
            return 2 * full * kf, 2 * kr, 16
        width = max(1, (rem - 1).bit_length())
        return 2 * full * kf, packed_nbytes(kr, width), width

    def payload_nbytes(self, shape, dtype):
        n = _numel(shape)
        k = self.num_kept(n)
        head, tail, _ = self._index_nbytes(n)
        if self.levels is None:
            return k * _itemsize(dtype) + head + tail
        return self.levels.nbytes(n, k) + head + tail

    def _chunk_of(self, n: int, device) -> torch.Tensor:
        """int64 [k]: the chunk of each kept value, in payload order."""
        full, kf, _, _ = self._split(n)
        return (torch.arange(self.num_kept(n), device=device) // max(kf, 1)).clamp_(max=full)

    def select(self, flat: torch.Tensor) -> torch.Tensor:
        """int64 [k]: kept flat positions, chunk by chunk, ascending within each chunk."""
        full, kf, rem, kr = self._split(flat.numel())
        parts = []
        if full:
            parts.append(_top_rows(flat[: full * CHUNK].view(full, CHUNK), kf))
        if rem:
            parts.append(_top_rows(flat[full * CHUNK:].view(1, rem), kr) + full * CHUNK)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def encode(self, x, seed=0):
        if self.levels is None and kernels.fusable(x):
            return kernels.load("triton_sparse").topk_encode(self, x)
        flat = x.reshape(-1)  # [n]
        n = flat.numel()
        pos = self.select(flat)  # [k]
        values, local = flat[pos], pos % CHUNK
        head, _, width = self._index_nbytes(n)
        if self.levels is None:  # local < 65536: 16-bit words (bitpack's width-16 path)
            return torch.cat([_bytes(values), pack_bits(local, 16)])
        scale, codes = self.levels.encode(values, self._chunk_of(n, x.device), n)
        split = head // 2
        return torch.cat([_bytes(scale), pack_bits(local[:split], 16),
                          pack_bits(local[split:], width), codes])

    def decode(self, payload, shape, dtype, seed=0):
        if self.levels is None and kernels.fusable(payload, dtype, align=dtype.itemsize):
            return kernels.load("triton_sparse").topk_decode(self, payload, shape, dtype)
        n = _numel(shape)
        k, chunk = self.num_kept(n), self._chunk_of(n, payload.device)
        head, tail, width = self._index_nbytes(n)
        if self.levels is None:
            nval = k * _itemsize(dtype)
            values = _as_dtype(payload[:nval], dtype)  # [k]
            local = unpack_bits(payload[nval:], 16, k)
        else:
            nscale = 4 * -(-n // CHUNK)
            scale = _as_dtype(payload[:nscale], torch.float32)
            idx_head = unpack_bits(payload[nscale:nscale + head], 16, head // 2)
            idx_tail = unpack_bits(payload[nscale + head:nscale + head + tail], width, k - head // 2)
            local = torch.cat([idx_head, idx_tail.to(torch.int64)])
            values = self.levels.decode(scale, payload[nscale + head + tail:], chunk).to(dtype)
        out = torch.zeros(n, dtype=dtype, device=payload.device)
        out[local + chunk * CHUNK] = values  # positions are distinct: deterministic
        return out.reshape(shape)


def _top_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [r * k]: flat positions (in `rows` [r, L]) of each row's k largest |x|, ties to the
    lowest index, ascending. A few rows at a time (in cache on CPU); no host sync:
    nonzero_static has a fixed output size."""
    r, length = rows.shape
    per = max(1, chunk_size(rows.device) // length)
    out = torch.empty(r * k, dtype=torch.int64, device=rows.device)
    for lo in range(0, r, per):
        block = rows[lo:lo + per]
        mag = block.abs().nan_to_num_(nan=math.inf, posinf=math.inf)  # [p, L]
        top = mag.topk(k, dim=1, sorted=False).values  # [p, k]
        thr = top.amin(dim=1, keepdim=True)  # [p, 1]: the k-th largest
        need = k - (top > thr).sum(dim=1, keepdim=True, dtype=torch.int32)  # ties to keep, per row
        tie = mag == thr
        keep = tie.cumsum(dim=1, dtype=torch.int32).le_(need).bitwise_and_(tie).bitwise_or_(mag > thr)
        found = torch.nonzero_static(keep.view(-1), size=block.shape[0] * k).view(-1)
        out[lo * k:(lo + block.shape[0]) * k] = found.add_(lo * length)
    return out


class RandKCodec(Codec):
    """k = ceil(R * n) positions drawn from the shared seed; only the (quantised) values travel."""

    def __init__(self, ratio: float, scale: bool, spec: str, bits: int = None):
        self.spec, self.ratio, self.scale = spec, ratio, scale
        self.levels = _Levels(bits) if bits else None
        self._memo = (None, None)  # last (key, (positions, lengths)): the sender decodes right after
        self._strata: dict = {}    # (n, device) -> (starts, lengths): fixed per run

    def strata(self, n: int, device) -> tuple:
        """(first position, length) of each of the k strata, int64 [k]."""
        device = torch.device(device)
        if (n, device) not in self._strata:
            k = ceil_frac(self.ratio, n)
            bounds = torch.arange(k + 1, dtype=torch.int64, device=device) * n // k  # [k + 1]
            self._strata[(n, device)] = (bounds[:-1], bounds[1:] - bounds[:-1])
        return self._strata[(n, device)]

    def _draw(self, n: int, seed: int, device) -> tuple:
        device = torch.device(device)
        key = (n, seed, device)
        if self._memo[0] != key:
            starts, lengths = self.strata(n, device)
            self._memo = (key, (below(lengths, stream_key(seed, RANDK)).add_(starts), lengths))
        return self._memo[1]

    def num_kept(self, n: int) -> int:
        return ceil_frac(self.ratio, n)

    def indices(self, n: int, seed: int, device) -> torch.Tensor:
        """The k positions for this seed, ascending: identical on every device."""
        return self._draw(n, seed, device)[0]

    def payload_nbytes(self, shape, dtype):
        n = _numel(shape)
        k = ceil_frac(self.ratio, n)
        return k * _itemsize(dtype) if self.levels is None else self.levels.nbytes(n, k)

    def encode(self, x, seed=0):
        if kernels.fusable(x):
            return kernels.load("triton_sparse").randk_encode(self, x, seed)
        flat = x.reshape(-1)
        pos = self.indices(flat.numel(), seed, x.device)
        if self.levels is None:
            return _bytes(flat[pos])
        scale, codes = self.levels.encode(flat[pos], pos // CHUNK, flat.numel())
        return torch.cat([_bytes(scale), codes])

    def decode(self, payload, shape, dtype, seed=0):
        if kernels.fusable(payload, dtype, align=4 if self.levels else dtype.itemsize):
            return kernels.load("triton_sparse").randk_decode(self, payload, shape, dtype, seed)
        n = _numel(shape)
        pos, lengths = self._draw(n, seed, payload.device)
        if self.levels is None:
            values = _as_dtype(payload, dtype)
        else:  # fp32, cast once below
            nscale = 4 * -(-n // CHUNK)
            scale = _as_dtype(payload[:nscale], torch.float32)
            values = self.levels.decode(scale, payload[nscale:], pos // CHUNK)
        if self.scale:
            values = values.float() * lengths
        out = torch.zeros(n, dtype=dtype, device=payload.device)
        out.index_copy_(0, pos, values.to(dtype))
        return out.reshape(shape)
