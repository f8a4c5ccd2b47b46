"""hquant:B[:block][:sr] -- randomized-Hadamard-rotated B-bit quantisation (TAH-Quant's idea).

Along the last (hidden) dim D, x is cut into blocks of `blk` elements; each block is multiplied
by random signs and rotated by the orthonormal Hadamard matrix H (blk x blk). The rotation
spreads an outlier over its whole block, so a per-token-per-block absmax scale wastes few
levels on it. Then each rotated value is quantised to one of L + 1 = 2**B evenly spaced,
zero-symmetric levels (mid-rise: (q - L/2) * delta, q in 0..L, delta = 2 * scale / L), with
round-to-nearest or, with `:sr`, stochastic rounding (unbiased).

    blk     = min(block, next power of two >= D)      block: default 64, a power of two
    Dp      = ceil(D / blk) * blk                     (x is zero-padded to Dp; pad not sent)
    rows    = numel / D  (tokens),  nb = Dp / blk
    payload = scales [rows, nb] (bf16) | codes bit-packed, lowest bits first
    nbytes  = 2 * rows * nb + ceil(rows * Dp * B / 8)

B = 2, 4, 8 pack 8 // B codes per byte; B = 3 packs 8 codes into 3 bytes (the last group is
truncated to ceil(n * 3 / 8) bytes). Scales are stored as bf16 rounded up from the absmax, and
the encoder quantises with the stored (rounded) scale, so nothing is clipped.

Error bound (round to nearest): |y_hat - y| <= delta / 2 for every rotated value, and the
rotation is orthonormal, so ||x_hat - x||_2^2 <= sum over (token, block) of blk * (scale / L)^2.

Signs come from the per-call seed that both ends derive (step, boundary, direction, slot;
as for randk), on the tensor's device; the stochastic-rounding noise from a second generator
seeded from the same value. Both are vectorised torch ops (CPU and CUDA alike).
"""

import math

import torch

from .base import Codec, _as_dtype, _bytes, _generator

_NOISE_SALT = 0x5DEECE66D  # the rounding noise's generator: seed ^ salt, never the signs' seed


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def hadamard(n: int, device, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix [n, n] (n a power of two); symmetric, H @ H = I."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(device=device, dtype=dtype)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [n] (each < 2**bits) -> ceil(n * bits / 8) bytes, lowest bits first."""
    n = codes.numel()
    nbytes = math.ceil(n * bits / 8)
    group = 8 if bits == 3 else 8 // bits  # codes per packing unit (3 bytes for B = 3, else 1)
    pad = (-n) % group
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    if bits == 8:
        return codes
    if bits == 3:
        cols = codes.view(-1, 8).to(torch.int32)  # [groups, 8]
        word = cols[:, 0].clone()
        for j in range(1, 8):
            word |= cols[:, j] << (3 * j)
        out = torch.stack([(word >> (8 * k)) & 0xFF for k in range(3)], dim=1).to(torch.uint8)
        return out.reshape(-1)[:nbytes]
    cols = codes.view(-1, group)  # [nbytes, per byte]
    packed = cols[:, 0].clone()
    for j in range(1, group):
        packed |= cols[:, j] << (bits * j)
    return packed


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits: n uint8 codes."""
    if bits == 8:
        return packed[:n]
    mask = (1 << bits) - 1
    if bits == 3:
        pad = (-packed.numel()) % 3
        if pad:
            packed = torch.cat([packed, packed.new_zeros(pad)])
        b = packed.view(-1, 3).to(torch.int32)  # [groups, 3]
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        cols = [(word >> (3 * j)) & mask for j in range(8)]
        return torch.stack(cols, dim=1).reshape(-1)[:n].to(torch.uint8)
    cols = [(packed >> (bits * j)) & mask for j in range(8 // bits)]
    return torch.stack(cols, dim=1).reshape(-1)[:n]


class HQuantCodec(Codec):
    """See the module docstring. `signs(Dp, seed, device)` is what both ends must agree on."""

    def __init__(self, bits: int, block: int, stochastic: bool, spec: str):
        self.spec, self.bits, self.block, self.stochastic = spec, bits, block, stochastic
        self.levels = (1 << bits) - 1  # L: codes 0..L
        self._h = {}  # (blk, device) -> Hadamard matrix
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
        """Random +-1 [Dp] (fp32) for this seed: identical on both ends (same device type)."""
        device = torch.device(device)
        key = (dp, seed, device)
        if self._memo[0] != key:
            bits = torch.randint(0, 2, (dp,), generator=_generator(device, seed), device=device)
            self._memo = (key, bits.to(torch.float32).mul_(2).sub_(1))
        return self._memo[1]

    def _hadamard(self, blk: int, device) -> torch.Tensor:
        key = (blk, torch.device(device))
        if key not in self._h:
            self._h[key] = hadamard(blk, device)
        return self._h[key]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x, seed=0):
        rows, d, blk, dp = self.geometry(x.shape)
        nb = dp // blk
        xf = x.reshape(rows, d).float()  # [rows, D]
        if dp != d:
            xf = torch.nn.functional.pad(xf, (0, dp - d))  # [rows, Dp]
        # pass 1: signs and rotation, y = (x * s) @ H per block
        y = (xf * self.signs(dp, seed, x.device)).view(rows * nb, blk) @ self._hadamard(blk, x.device)
        # pass 2: per-(token, block) absmax, rounded up to bf16 (the stored scale), quantise
        amax = y.abs().amax(dim=1, keepdim=True)  # [rows * nb, 1]
        scale = (amax * (1 + 2 ** -7)).to(torch.bfloat16)
        inv = self.levels / 2 / scale.float()
        inv = torch.where(scale > 0, inv, torch.zeros_like(inv))
        u = y.mul_(inv).add_(self.levels / 2)  # in [0, L]
        if self.stochastic:
            noise = torch.rand(u.shape, generator=_generator(x.device, seed ^ _NOISE_SALT), device=x.device)
            u = u.add_(noise).floor_()
        else:
            u = u.round_()
        codes = u.clamp_(0, self.levels).to(torch.uint8).reshape(-1)
        return torch.cat([_bytes(scale), pack_bits(codes, self.bits)])

    def decode(self, payload, shape, dtype, seed=0):
        rows, d, blk, dp = self.geometry(shape)
        nb = dp // blk
        scale = _as_dtype(payload[: 2 * rows * nb], torch.bfloat16).float().view(rows * nb, 1)
        q = unpack_bits(payload[2 * rows * nb:], self.bits, rows * dp).view(rows * nb, blk).float()
        y = q.sub_(self.levels / 2).mul_(scale * (2 / self.levels))  # [rows * nb, blk]
        x = (y @ self._hadamard(blk, payload.device)).view(rows, dp)
        x = x.mul_(self.signs(dp, seed, payload.device))[:, :d]
        return x.to(dtype).reshape(shape)

    def error_bound(self, x: torch.Tensor, seed: int = 0) -> float:
        """Upper bound on ||decode(encode(x)) - x||_2 for round to nearest (tests, docs)."""
        rows, d, blk, dp = self.geometry(x.shape)
        xf = torch.nn.functional.pad(x.reshape(rows, d).float(), (0, dp - d))
        y = (xf * self.signs(dp, seed, x.device)).view(-1, blk) @ self._hadamard(blk, x.device)
        scale = (y.abs().amax(dim=1) * (1 + 2 ** -7)).to(torch.bfloat16).float()
        return float(torch.sqrt((blk * (scale / self.levels) ** 2).sum()))
