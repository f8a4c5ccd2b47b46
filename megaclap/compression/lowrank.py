"""lowrank:R[:warm] -- a rank-R approximation of the message, PowerSGD's single power iteration.

The message x is viewed as a matrix X [T, D]: D = shape[-1] (hidden), T = numel / D (tokens;
a 0-d or 1-D tensor is one row). The rank used is r = min(R, T, D); with R >= min(T, D) the
factorisation is exact up to the rounding of the factors, but its payload, 2 r (T + D) bytes,
can then exceed the raw tensor's.

    Q0 = a [D, r] start: uniforms in (-1, 1) from the shared hash (stream LOWRANK, index
         d * r + j), or with `:warm` the previous Q factor of this channel (columns that are
         zero or not finite fall back to Q0's)
    P  = orthonormal basis of X Q0      [T, r]  (Householder QR)
    Q  = X^T P                          [D, r]
    X_hat = P Q^T                       (= P P^T X: exact when X has rank <= r)

    payload = P [T, r] | Q [D, r], in bf16 (fp16 when the message is fp16)     2 r (T + D) bytes

`:warm` is PowerSGD's warm start: consecutive messages of one channel span similar subspaces, so
starting from the last Q tracks them better than a fresh random start. Both ends hold that Q
(it is in every payload): the Channel keeps it as state beside m and e (checkpointed, rolled
back with them) and passes it to encode as `start`; the codec itself stays stateless.

Decode is the same on every device: the factors are 16-bit floats, so each product P[t, j] *
Q[d, j] is exact in fp32, and X_hat is accumulated over j = 0 .. r-1 in that order, one IEEE
addition per term (no matmul, whose summation order is the BLAS's). Encode (matmuls, QR) runs
only on the sender; another device may produce other (equally valid) factors.
"""

import torch

from .base import Codec, _as_dtype, _bytes
from .shared_random import LOWRANK, centred, stream_key


class LowRankCodec(Codec):
    """See the module docstring; `factors` reads (P, Q) back from a payload."""

    def __init__(self, rank: int, warm: bool, spec: str):
        self.spec, self.rank, self.warm = spec, rank, warm

    def geometry(self, shape) -> tuple:
        """(T, D, r): the matrix view [T, D] and the rank used."""
        d = int(shape[-1]) if len(shape) else 1
        t = torch.Size(shape).numel() // max(d, 1)
        return t, d, min(self.rank, t, d)

    @staticmethod
    def factor_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.float16 if dtype == torch.float16 else torch.bfloat16

    def payload_nbytes(self, shape, dtype):
        t, d, r = self.geometry(shape)
        return 2 * r * (t + d)

    def start(self, d: int, r: int, seed: int, device) -> torch.Tensor:
        """The seed's random start Q0 [D, r] (fp32, exact on every device)."""
        return centred(d * r, stream_key(seed, LOWRANK), device).view(d, r)

    def encode(self, x, seed=0, start=None):
        """start: the previous Q [D, r] (warm start), or None for the seed's random Q0."""
        t, d, r = self.geometry(x.shape)
        mat = x.reshape(t, d).float()  # [T, D]
        q0 = self.start(d, r, seed, x.device)
        if start is not None and tuple(start.shape) == (d, r):
            usable = start.isfinite().all(dim=0) & (start.abs().sum(dim=0) > 0)  # [r], no host sync
            q0 = torch.where(usable, start.float(), q0)
        p = torch.linalg.qr(mat @ q0).Q  # [T, r], orthonormal columns
        q = mat.t() @ p  # [D, r]
        fd = self.factor_dtype(x.dtype)
        return torch.cat([_bytes(p.to(fd)), _bytes(q.to(fd))])

    def factors(self, payload: torch.Tensor, shape, dtype) -> tuple:
        """(P [T, r], Q [D, r]) in fp32, exactly as the payload holds them."""
        t, d, r = self.geometry(shape)
        fd = self.factor_dtype(dtype)
        p = _as_dtype(payload[: 2 * t * r], fd).view(t, r).float()
        q = _as_dtype(payload[2 * t * r:], fd).view(d, r).float()
        return p, q

    def decode(self, payload, shape, dtype, seed=0):
        p, q = self.factors(payload, shape, dtype)
        out = p[:, :1] * q[:, 0]  # [T, D]: exact products, then one rounding per added term
        for j in range(1, p.shape[1]):
            out.addcmul_(p[:, j:j + 1], q[:, j])
        return out.to(dtype).reshape(shape)
