"""hquant:B[:block][:sr] -- randomized-Hadamard-rotated B-bit quantisation (TAH-Quant's idea).

Along the last (hidden) dim D, x is cut into blocks of `blk` elements; each block is multiplied
by random signs and rotated by the orthonormal Hadamard matrix H = S / sqrt(blk), S the +-1
Sylvester matrix (S[i][j] = (-1)^popcount(i & j)). The rotation spreads an outlier over its whole
block, so a per-token-per-block scale wastes few levels on it. Each rotated value y is then
quantised to one of L + 1 = 2**B evenly spaced, zero-symmetric levels (mid-rise: (q - L/2) *
delta, q in 0..L, delta = 2 * scale / L), with round to nearest (half to even) or, with `:sr`,
stochastic rounding (unbiased).

    blk     = min(block, next power of two >= D)      block: default 64, a power of two <= 4096
    Dp      = ceil(D / blk) * blk                     (x is zero-padded to Dp; pad not sent)
    rows    = numel / D  (tokens),  nb = Dp / blk
    payload = scales [rows, nb] (bf16) | codes bit-packed (bitpack.py)
    nbytes  = 2 * rows * nb + ceil(rows * Dp * B / 8)

Scale: B >= 2 and every `:sr` stores the rotated block's absmax times (1 + 2^-7), rounded to
bf16, and quantises with that stored scale, so nothing is clipped. B = 1 with round to nearest
sends the sign of each rotated value and stores mean |y| of the block (bf16, nearest): the
least-squares scale for fixed signs (1 + 16 / blk bits per element, 1.25 at block 64); with
`:sr` it needs the absmax, and then E[decode] = y exactly.

Error bound (round to nearest, B >= 2): |y_hat - y| <= delta / 2 for every rotated value, and
the rotation is orthonormal, so ||x_hat - x||_2^2 <= sum over (token, block) of blk * (scale / L)^2.

Shared randomness (shared_random.py), from the per-call seed both ends derive: the signs are
the top bits of the hash of d in [0, Dp) (stream SIGNS); the `:sr` uniforms those of the flat
index r * Dp + c of the padded [rows, Dp] layout (stream ROUNDING).

Arithmetic (fp32, each step one IEEE operation with a fixed order, so the Triton kernels of
kernels/triton_hquant.py and torch on any device produce the same payload bit for bit):

    z      = fwht(x * s) per block: butterflies in one fixed order (`fwht`), so z = (x * s) @ S
             rounded the same way everywhere (a matmul's rounding would be its BLAS's)
    scale  = bf16(max |z| * k_scale), k_scale = fp32((1 + 2^-7) / sqrt(blk)); B = 1 nearest:
             bf16(halving_sum |z| * fp32(1 / (blk sqrt(blk)))), the sum in a fixed pairwise order
    inv    = fp32(1 / scale) * k_inv, k_inv = fp32(L / (2 sqrt(blk))); 0 where the scale is 0
    u      = (z * inv) + L/2 (two roundings: no fused multiply-add), then round half to even or
             floor(u + uniform), clamped to [0, L]

Decode is exact arithmetic and so the same on every device: t = q - L/2 is a multiple of 1/2,
t @ S sums at most blk of them (|sum| <= 4096 * 127.5 < 2^20, a multiple of 1/2: exact in
fp32 in any order, also as TF32 or as the kernel's butterflies), then one fp32 multiply by
f = scale * fp32(2 / (L * sqrt(blk))) (itself one multiply), the sign, one cast.
"""

import math

import torch

from . import kernels
from .base import Codec, _as_dtype, _bytes
from .bitpack import pack_bits, unpack_bits
from .shared_random import ROUNDING, SIGNS, signs, stochastic_floor_, stream_key



def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _fp32(value: float) -> float:
    """value rounded to fp32 (so torch and Triton multiply by the same constant)."""
    return float(torch.tensor(value, dtype=torch.float32))


def fwht(z: torch.Tensor) -> torch.Tensor:
    """z @ S along dim 1 of z [n, blk] (fp32, blk a power of two), as butterflies in one fixed
    order: for h = 1, 2, 4, .., blk / 2, each pair (i, i + h) of every group of 2h becomes
    (a + b, a - b). Every addition is exactly rounded, so any device (and the Triton kernel)
    doing the same additions gets the same bits; a matmul's order would be its BLAS's."""
    n, blk = z.shape
    src, dst, h = z, torch.empty_like(z), 1
    while h < blk:
        v, o = src.view(n, blk // (2 * h), 2, h), dst.view(n, blk // (2 * h), 2, h)
        torch.add(v[:, :, 0], v[:, :, 1], out=o[:, :, 0])
        torch.sub(v[:, :, 0], v[:, :, 1], out=o[:, :, 1])
        src, dst, h = dst, src, 2 * h
    return src


def halving_sum(a: torch.Tensor) -> torch.Tensor:
    """[n, 1] sums of a [n, blk] in one fixed order: a[:, i] + a[:, i + blk / 2], then again."""
    while a.shape[1] > 1:
        half = a.shape[1] // 2
        a = a[:, :half] + a[:, half:]
    return a


def sylvester(n: int, device) -> torch.Tensor:
    """The +-1 Sylvester Hadamard matrix [n, n] (fp32; n a power of two); symmetric, S @ S = n I."""
    s = torch.ones(1, 1)
    while s.shape[0] < n:
        s = torch.cat([torch.cat([s, s], 1), torch.cat([s, -s], 1)], 0)
    return s.to(device)


class HQuantCodec(Codec):
    """See the module docstring. `signs(Dp, seed, device)` is what both ends must agree on."""

    def __init__(self, bits: int, block: int, stochastic: bool, spec: str):
        self.spec, self.bits, self.block, self.stochastic = spec, bits, block, stochastic
        self.levels = (1 << bits) - 1  # L: codes 0..L
        self.mean_scale = bits == 1 and not stochastic  # B = 1, round to nearest: mean |y|
        self._s = {}  # (blk, device) -> Sylvester matrix
        self._constants = {}  # blk -> constants(blk)
        self._memo = (None, None)  # (key, signs): the sender decodes right after encoding

    # ------------------------------------------------------------------ geometry
    def geometry(self, shape) -> tuple:
        """(rows, D, blk, Dp) for a tensor of this shape."""
        d = int(shape[-1]) if len(shape) else 1
        blk = min(self.block, _next_pow2(d))
        dp = -(-d // blk) * blk
        return math.prod(shape) // max(d, 1), d, blk, dp

    def payload_nbytes(self, shape, dtype):
        rows, _, blk, dp = self.geometry(shape)
        return 2 * rows * (dp // blk) + math.ceil(rows * dp * self.bits / 8)

    def signs(self, dp: int, seed: int, device) -> torch.Tensor:
        """Random +-1 [Dp] (fp32) for this seed: identical on both ends and every device."""
        device = torch.device(device)
        key = (dp, seed, device)
        if self._memo[0] != key:
            self._memo = (key, signs(dp, stream_key(seed, SIGNS), device))
        return self._memo[1]

    def constants(self, blk: int) -> tuple:
        """fp32 (k_scale, k_inv, k_dec) for a block of blk (module docstring, "Arithmetic")."""
        if blk not in self._constants:
            root = math.sqrt(blk)
            size = 1 / (blk * root) if self.mean_scale else (1 + 2 ** -7) / root
            self._constants[blk] = (_fp32(size), _fp32(self.levels / (2 * root)),
                                    _fp32(2 / (self.levels * root)))
        return self._constants[blk]

    def _sylvester(self, blk: int, device) -> torch.Tensor:
        key = (blk, torch.device(device))
        if key not in self._s:
            self._s[key] = sylvester(blk, device)
        return self._s[key]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x, seed=0):
        if kernels.fusable(x):
            return kernels.load("triton_hquant").encode(self, x, seed)
        rows, d, blk, dp = self.geometry(x.shape)
        nb = dp // blk
        xf = x.reshape(rows, d).float()  # [rows, D]
        if dp != d:
            xf = torch.nn.functional.pad(xf, (0, dp - d))  # [rows, Dp]
        # pass 1: signs and rotation, z = (x * s) @ S per block (y = z / sqrt(blk))
        z = fwht((xf * self.signs(dp, seed, x.device)).view(rows * nb, blk))  # [rows * nb, blk]
        # pass 2: per-(token, block) scale (bf16, the stored value), then quantise with it
        k_scale, k_inv, _ = self.constants(blk)
        size = halving_sum(z.abs()) if self.mean_scale else z.abs().amax(dim=1, keepdim=True)
        scale = (size * k_scale).to(torch.bfloat16)  # [rows * nb, 1]
        inv = torch.reciprocal(scale.float()).mul_(k_inv)
        inv = torch.where(scale > 0, inv, torch.zeros_like(inv))
        u = z.mul_(inv).add_(self.levels / 2)  # in [0, L] (B = 1 round to nearest: the sign)
        if self.stochastic:
            stochastic_floor_(u, stream_key(seed, ROUNDING), 0, self.levels)
        else:
            u = u.round_().clamp_(0, self.levels)
        codes = u.to(torch.uint8).reshape(-1)
        return torch.cat([_bytes(scale), pack_bits(codes, self.bits)])

    def decode(self, payload, shape, dtype, seed=0):
        if kernels.fusable(payload, dtype, align=2):
            return kernels.load("triton_hquant").decode(self, payload, shape, dtype, seed)
        rows, d, blk, dp = self.geometry(shape)
        nb = dp // blk
        scale = _as_dtype(payload[: 2 * rows * nb], torch.bfloat16).float().view(rows * nb, 1)
        q = unpack_bits(payload[2 * rows * nb:], self.bits, rows * dp).view(rows * nb, blk)
        t = q.float().sub_(self.levels / 2)  # q - L/2: multiples of 1/2, |t| <= L/2
        z = t @ self._sylvester(blk, payload.device)  # exact sums of halves
        f = scale.mul_(self.constants(blk)[2])
        x = z.mul_(f).view(rows, dp).mul_(self.signs(dp, seed, payload.device))[:, :d]
        return x.to(dtype).reshape(shape)
