"""hquant:B[:block][:sr] (hquant.HQuantCodec) fused: one kernel per encode, one per decode.

A program takes U consecutive (token, block) units as a [U, BLK] tile in registers: loads x (the
zero pad beyond D comes from the load mask), flips the signs (the SIGNS hash of the column,
computed in place), rotates with the butterflies of hquant.fwht in the same order (each stage a
reshape to [U, G, 2, h] and two 2-term sums: a + b and a + (-b) = a - b, exactly torch's
add/sub), takes the per-unit scale, quantises and packs. Decode reverses it; its butterflies sum
halves exactly, as the reference's matmul does.
"""
import math

import torch
import triton
import triton.language as tl

from .triton_common import KIND, LAUNCH, bf16_bits, floor_exact, hash32, key_words, load_codes
from .triton_common import load_f32, new_payload, reciprocal, round_even, rounding_u, store_as
from .triton_common import store_codes
from ..shared_random import ROUNDING, SIGNS, stream_key

ELEMENTS_PER_PROGRAM = 4096


@triton.jit
def _fwht(z, U: tl.constexpr, BLK: tl.constexpr, LOG: tl.constexpr):
    """hquant.fwht on the rows of z [U, BLK]: stages h = 1, 2, .., BLK / 2."""
    first = (tl.arange(0, 2) == 0)[None, None, :, None]  # [1, 1, 2, 1]
    flip = tl.where(first, 1.0, -1.0)
    for s in tl.static_range(LOG):
        t = tl.reshape(z, (U, BLK // (2 << s), 2, 1 << s))  # [U, G, 2, h]: pairs (i, i + h)
        plus = tl.sum(t, axis=2)
        minus = tl.sum(t * flip, axis=2)
        z = tl.reshape(tl.where(first, plus[:, :, None, :], minus[:, :, None, :]), (U, BLK))
    return z


@triton.jit
def _tile(units, D, nb, U: tl.constexpr, BLK: tl.constexpr):
    """Unit indices [U], their mask, element offsets into x [U, BLK], columns [U, BLK], mask."""
    u = tl.program_id(0).to(tl.int64) * U + tl.arange(0, U)
    col = (u % nb)[:, None] * BLK + tl.arange(0, BLK)[None, :]  # column in the padded row
    mask = (u < units)[:, None] & (col < D)
    return u, u < units, (u // nb)[:, None] * D + col, col, mask


@triton.jit
def _encode(x_ptr, pay_ptr, units, D, nb, nbytes, k_scale, k_inv, s0, s1, r0, r1,
            IN_KIND: tl.constexpr, U: tl.constexpr, BLK: tl.constexpr, LOG: tl.constexpr,
            BITS: tl.constexpr, LEVELS: tl.constexpr, MEAN: tl.constexpr, SR: tl.constexpr):
    u, um, offs, col, mask = _tile(units, D, nb, U, BLK)
    x = load_f32(x_ptr, offs, mask, IN_KIND)
    negative = (hash32(col.to(tl.uint32), s0, s1) >> 31) != 0
    z = _fwht(tl.where(negative, -x, x), U, BLK, LOG)  # [U, BLK]
    if MEAN:  # hquant.halving_sum
        a = tl.abs(z)
        for s in tl.static_range(LOG):
            a = tl.sum(tl.reshape(a, (U, 2, BLK >> (s + 1))), axis=1)
        size = tl.reshape(a, (U,))
    else:
        size = tl.max(tl.abs(z), axis=1)
    bits16 = bf16_bits(size * k_scale)  # [U]
    scale = (bits16.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    inv = tl.where(scale > 0, reciprocal(scale) * k_inv, 0.0)
    y = z * inv[:, None] + LEVELS / 2
    if SR:
        e = u[:, None] * BLK + tl.arange(0, BLK)[None, :]  # flat index in [units, BLK]
        y = floor_exact(y + rounding_u(e, r0, r1))
    else:
        y = round_even(y)
    codes = tl.where(um[:, None], tl.minimum(tl.maximum(y, 0.0), LEVELS), 0.0).to(tl.uint32)
    tl.store(pay_ptr.to(tl.pointer_type(tl.uint16)) + u, bits16, mask=um)
    byte0 = tl.program_id(0).to(tl.int64) * (U * BLK * BITS // 8)
    store_codes(pay_ptr + 2 * units, byte0, tl.reshape(codes, (U * BLK,)), nbytes, U * BLK, BITS)


@triton.jit
def _decode(pay_ptr, out_ptr, units, D, nb, nbytes, k_dec, s0, s1, OUT_KIND: tl.constexpr,
            U: tl.constexpr, BLK: tl.constexpr, LOG: tl.constexpr, BITS: tl.constexpr,
            LEVELS: tl.constexpr):
    u, um, offs, col, mask = _tile(units, D, nb, U, BLK)
    bits16 = tl.load(pay_ptr.to(tl.pointer_type(tl.uint16)) + u, mask=um, other=0)
    scale = (bits16.to(tl.uint32) << 16).to(tl.float32, bitcast=True)  # [U]
    byte0 = tl.program_id(0).to(tl.int64) * (U * BLK * BITS // 8)
    codes = load_codes(pay_ptr + 2 * units, byte0, nbytes, U * BLK, BITS)
    t = tl.reshape(codes, (U, BLK)).to(tl.float32) - LEVELS / 2
    z = _fwht(t, U, BLK, LOG) * (scale * k_dec)[:, None]
    negative = (hash32(col.to(tl.uint32), s0, s1) >> 31) != 0
    store_as(out_ptr, offs, tl.where(negative, -z, z), mask, OUT_KIND)


def _shape(codec, shape) -> tuple:
    """(units, D, blk, nb, U, LOG): U units of blk elements a program."""
    rows, d, blk, dp = codec.geometry(shape)
    per = max(1, ELEMENTS_PER_PROGRAM // blk)
    return rows * (dp // blk), d, blk, dp // blk, per, int(math.log2(blk))


def encode(codec, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The payload codec.encode(x, seed) returns, from one kernel."""
    x = x.contiguous()
    units, d, blk, nb, per, log = _shape(codec, x.shape)
    payload = new_payload(codec, x)
    k_scale, k_inv, _ = codec.constants(blk)
    s0, s1 = key_words(stream_key(seed, SIGNS))
    r0, r1 = key_words(stream_key(seed, ROUNDING)) if codec.stochastic else (0, 0)
    _encode[(triton.cdiv(units, per),)](
        x, payload, units, d, nb, payload.numel() - 2 * units, k_scale, k_inv, s0, s1, r0, r1,
        IN_KIND=KIND[x.dtype], U=per, BLK=blk, LOG=log, BITS=codec.bits, LEVELS=codec.levels,
        MEAN=codec.mean_scale, SR=codec.stochastic, **LAUNCH)
    return payload


def decode(codec, payload: torch.Tensor, shape, dtype, seed: int) -> torch.Tensor:
    """codec.decode(payload, shape, dtype, seed) from one kernel (payload 2-byte aligned)."""
    units, d, blk, nb, per, log = _shape(codec, shape)
    out = torch.empty(shape, dtype=dtype, device=payload.device)
    s0, s1 = key_words(stream_key(seed, SIGNS))
    _decode[(triton.cdiv(units, per),)](
        payload, out, units, d, nb, payload.numel() - 2 * units, codec.constants(blk)[2], s0, s1,
        OUT_KIND=KIND[dtype], U=per, BLK=blk, LOG=log, BITS=codec.bits, LEVELS=codec.levels,
        **LAUNCH)
    return out
