"""Sparse codecs (sparse.py) fused: randk's draw, gather and scatter; topk's pack and unpack.

randk: the kept position of stratum j is start_j + (h_j * len_j) >> 32 (shared_random.below: a
uint32 high multiply), computed where it is needed, so no index tensor is ever built.
    encode       one kernel: values[j] = x[pos_j]
    encode :qB   two: per chunk the absmax of its kept values (a program a chunk, over the strata
                 that overlap it: no atomics), then codes, a byte of the code stream at a time
    decode       one kernel over the output: element e lies in stratum j = ((e + 1) k - 1) // n;
                 it gets the (decoded) value j if pos_j == e, else 0 (no zero fill, no scatter)
topk (plain values): the selection stays torch's (topk.select); the kernels replace the gather,
the index arithmetic and the concatenation (encode), and the scatter (decode, after a zero fill).
"""
import torch
import triton
import triton.language as tl

from .triton_common import KIND, LAUNCH, hash32, key_words, load_codes, load_f32, reciprocal
from .triton_common import new_payload, round_even, store_as, store_codes
from ..shared_random import RANDK, stream_key
from ..sparse import CHUNK

BLOCK = 1024


@triton.jit
def _kept(j, n, k, k0, k1):
    """int64 position kept in each stratum j and the stratum's length (int64 products)."""
    j = j.to(tl.int64)
    start = j * n // k
    length = (j + 1) * n // k - start
    draw = tl.umulhi(hash32(j.to(tl.uint32), k0, k1), length.to(tl.uint32))
    return start + draw.to(tl.int64), length


@triton.jit
def _randk_gather(x_ptr, val_ptr, n, k, k0, k1, B: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    pos, _ = _kept(j, n, k, k0, k1)
    tl.store(val_ptr + j, tl.load(x_ptr + pos, mask=j < k), mask=j < k)


@triton.jit
def _randk_scales(x_ptr, pay_ptr, n, k, k0, k1, IN_KIND: tl.constexpr, B: tl.constexpr):
    """Program c: fp32 absmax of the values kept in chunk c, into scale word c of the payload."""
    c = tl.program_id(0).to(tl.int64)
    lo = c * 65536  # the strata overlapping [lo, hi) are j_lo ..= j_hi
    hi = tl.minimum(lo + 65536, n.to(tl.int64))
    j_lo, j_hi = ((lo + 1) * k - 1) // n, (hi * k - 1) // n
    best = tl.zeros((B,), tl.float32)
    for first in range(j_lo, j_hi + 1, B):
        j = tl.arange(0, B).to(tl.int64) + first
        pos, _ = _kept(j, n, k, k0, k1)
        mine = (j <= j_hi) & (pos >= lo) & (pos < hi)
        best = tl.maximum(best, tl.abs(load_f32(x_ptr, pos, mine, IN_KIND)))
    tl.store(pay_ptr.to(tl.pointer_type(tl.float32)) + c, tl.max(best, axis=0))


@triton.jit
def _randk_codes(x_ptr, pay_ptr, n, k, k0, k1, nscale, nbytes, IN_KIND: tl.constexpr,
                 QMAX: tl.constexpr, BITS: tl.constexpr, B: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    j = pid * B + tl.arange(0, B)
    pos, _ = _kept(j, n, k, k0, k1)
    v = load_f32(x_ptr, pos, j < k, IN_KIND)
    scale = tl.load(pay_ptr.to(tl.pointer_type(tl.float32)) + pos // 65536, mask=j < k, other=0.0)
    q = round_even(v * tl.where(scale > 0, reciprocal(scale) * QMAX, 0.0))
    codes = tl.where(j < k, q.to(tl.int32) + QMAX, 0).to(tl.uint32)
    store_codes(pay_ptr + nscale, pid * (B * BITS // 8), codes, nbytes, B, BITS)


@triton.jit
def _randk_decode(pay_ptr, out_ptr, n, k, k0, k1, nscale, nbytes, OUT_KIND: tl.constexpr,
                  SCALE: tl.constexpr, QMAX: tl.constexpr, BITS: tl.constexpr, B: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    j = ((e + 1) * k - 1) // n  # the stratum of e
    pos, length = _kept(j, n, k, k0, k1)
    hit = (e < n) & (pos == e)
    if BITS == 0:  # values as sent, in the output dtype
        if SCALE:
            value = load_f32(pay_ptr, j, hit, OUT_KIND) * length.to(tl.float32)
            store_as(out_ptr, e, tl.where(hit, value, 0.0), e < n, OUT_KIND)
        else:
            tl.store(out_ptr + e, tl.load(pay_ptr + j, mask=hit, other=0.0), mask=e < n)
    else:  # codes: value j is code j of the stream (BITS divides 8: one byte holds it)
        byte = tl.load(pay_ptr + nscale + j * BITS // 8, mask=hit, other=0).to(tl.int32)
        code = (byte >> ((j * BITS) % 8).to(tl.int32)) & ((1 << BITS) - 1)
        scale = tl.load(pay_ptr.to(tl.pointer_type(tl.float32)) + e // 65536, mask=hit, other=0.0)
        step = tl.math.div_rn(scale, tl.full(scale.shape, QMAX, tl.float32))
        value = (code - QMAX).to(tl.float32) * step
        if SCALE:
            value = value * length.to(tl.float32)
        store_as(out_ptr, e, tl.where(hit, value, 0.0), e < n, OUT_KIND)


@triton.jit
def _topk_pack(x_ptr, pos_ptr, val_ptr, idx_ptr, k, B: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    pos = tl.load(pos_ptr + j, mask=j < k, other=0)
    tl.store(val_ptr + j, tl.load(x_ptr + pos, mask=j < k), mask=j < k)
    tl.store(idx_ptr.to(tl.pointer_type(tl.uint16)) + j, (pos % 65536).to(tl.uint16), mask=j < k)


@triton.jit
def _topk_unpack(val_ptr, idx_ptr, out_ptr, k, kf, full, B: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    local = tl.load(idx_ptr.to(tl.pointer_type(tl.uint16)) + j, mask=j < k, other=0).to(tl.int64)
    pos = local + tl.minimum(j // kf, full) * 65536
    tl.store(out_ptr + pos, tl.load(val_ptr + j, mask=j < k), mask=j < k)


def _randk_key(seed: int) -> tuple:
    return key_words(stream_key(seed, RANDK))


def randk_encode(codec, x: torch.Tensor, seed: int) -> torch.Tensor:
    flat = x.contiguous().view(-1)
    n = flat.numel()
    payload = new_payload(codec, x)
    k, (k0, k1) = codec.num_kept(n), _randk_key(seed)
    if codec.levels is None:
        grid = (triton.cdiv(k, BLOCK),)
        _randk_gather[grid](flat, payload.view(x.dtype), n, k, k0, k1, B=BLOCK, **LAUNCH)
        return payload
    nscale, kind = 4 * triton.cdiv(n, CHUNK), KIND[x.dtype]
    _randk_scales[(triton.cdiv(n, CHUNK),)](flat, payload, n, k, k0, k1, IN_KIND=kind, B=BLOCK,
                                            **LAUNCH)
    _randk_codes[(triton.cdiv(k, BLOCK),)](flat, payload, n, k, k0, k1, nscale,
                                           payload.numel() - nscale, IN_KIND=kind,
                                           QMAX=codec.levels.qmax, BITS=codec.levels.bits,
                                           B=BLOCK, **LAUNCH)
    return payload


def randk_decode(codec, payload: torch.Tensor, shape, dtype, seed: int) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=payload.device)
    n = out.numel()
    k, (k0, k1) = codec.num_kept(n), _randk_key(seed)
    bits = 0 if codec.levels is None else codec.levels.bits
    qmax = 0 if codec.levels is None else codec.levels.qmax
    nscale = 0 if codec.levels is None else 4 * triton.cdiv(n, CHUNK)
    source = payload.view(dtype) if codec.levels is None else payload
    _randk_decode[(triton.cdiv(n, BLOCK),)](source, out, n, k, k0, k1, nscale,
                                            payload.numel() - nscale, OUT_KIND=KIND[dtype],
                                            SCALE=codec.scale, QMAX=qmax, BITS=bits, B=BLOCK,
                                            **LAUNCH)
    return out


def topk_encode(codec, x: torch.Tensor) -> torch.Tensor:
    """Plain topk: the positions from codec.select (torch), packed by one kernel."""
    flat = x.contiguous().view(-1)
    pos = codec.select(flat)  # [k] int64
    k, size = pos.numel(), flat.element_size()
    payload = torch.empty(k * (size + 2), dtype=torch.uint8, device=x.device)
    values, local = payload[: k * size].view(x.dtype), payload[k * size:]
    _topk_pack[(triton.cdiv(k, BLOCK),)](flat, pos, values, local, k, B=BLOCK, **LAUNCH)
    return payload


def topk_decode(codec, payload: torch.Tensor, shape, dtype) -> torch.Tensor:
    out = torch.zeros(shape, dtype=dtype, device=payload.device)
    n, size = out.numel(), out.element_size()
    k = codec.num_kept(n)
    full, kf, _, _ = codec._split(n)
    values, local = payload[: k * size].view(dtype), payload[k * size:]
    grid = (triton.cdiv(k, BLOCK),)
    _topk_unpack[grid](values, local, out, k, max(kf, 1), full, B=BLOCK, **LAUNCH)
    return out
