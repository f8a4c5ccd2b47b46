"""lowrank:R[:warm]: payload size, exactness on rank-R input, the matrix view of other shapes,
the fixed-order decode, and the warm-start factor as Channel state (both ends, checkpoint,
rollback)."""

import math

import pytest
import torch

from megaclap.compression.channels import Channel
from megaclap.compression.codecs import parse_codec

SHAPES = [(1, 7, 33), (2, 16, 64), (70001,), (3, 5, 100), (9, 1), (2, 3, 4, 5)]


def rank_r(t: int, d: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, r, generator=g) @ torch.randn(r, d, generator=g)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("spec", ["lowrank:1", "lowrank:4", "lowrank:64:warm"])
def test_payload_size_matches_formula(spec):
    """2 r (T + D) bytes, r = min(R, T, D), T = numel / D, D = shape[-1]."""
    codec = parse_codec(spec)
    rank = int(spec.split(":")[1])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in SHAPES:
            d = shape[-1]
            t = math.prod(shape) // d
            want = 2 * min(rank, t, d) * (t + d)
            payload = codec.encode(torch.randn(shape).to(dtype), seed=1)
            assert payload.dtype == torch.uint8 and payload.numel() == want == codec.payload_nbytes(shape, dtype)
            assert codec.decode(payload, shape, dtype, seed=1).shape == shape


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-2), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_exact_on_rank_r_input(dtype, tol):
    """A rank-3 [40, 24] message comes back up to the factors' rounding (bf16, or fp16 for an
    fp16 message); rank 2 of it cannot."""
    x = rank_r(40, 24, 3).to(dtype)
    for spec, bound in (("lowrank:3", tol), ("lowrank:3:warm", tol), ("lowrank:5", tol)):
        codec = parse_codec(spec)
        assert rel(codec.decode(codec.encode(x, seed=4), x.shape, dtype, seed=4), x) < bound, spec
    two = parse_codec("lowrank:2")
    assert rel(two.decode(two.encode(x, seed=4), x.shape, dtype, seed=4), x) > 0.05


def test_rank_at_least_the_matrix_size_is_exact_and_other_shapes_are_viewed_2d():
    """R >= min(T, D): exact for any input; a [2, 3, 4, 5] tensor is the [24, 5] matrix."""
    x = torch.randn(2, 3, 4, 5)
    codec = parse_codec("lowrank:5")
    assert codec.geometry(x.shape) == (24, 5, 5)
    assert rel(codec.decode(codec.encode(x, seed=2), x.shape, x.dtype, seed=2), x) < 1e-2
    flat = torch.randn(50)  # a 1-D tensor is one row: rank 1 is exact
    one = parse_codec("lowrank:3")
    assert one.geometry(flat.shape) == (1, 50, 1)
    assert rel(one.decode(one.encode(flat, seed=2), flat.shape, flat.dtype, seed=2), flat) < 1e-2
    zero = torch.zeros(6, 8)
    assert torch.equal(one.decode(one.encode(zero, seed=1), zero.shape, zero.dtype, seed=1), zero)


def test_decode_is_a_fixed_order_sum_of_exact_products():
    """X_hat accumulates P[:, j] Q[:, j]^T for j = 0, 1, ... in fp32, one rounding per term (the
    products of 16-bit factors are exact): pinned against that sum written out here."""
    x = torch.randn(3, 50, 40) * torch.linspace(0.01, 100, 40)
    codec = parse_codec("lowrank:6")
    payload = codec.encode(x, seed=9)
    p = payload[: 2 * 150 * 6].view(torch.bfloat16).view(150, 6).float()
    q = payload[2 * 150 * 6:].view(torch.bfloat16).view(40, 6).float()
    want = p[:, 0:1] * q[:, 0]
    for j in range(1, 6):
        want = want + torch.outer(p[:, j], q[:, j])
    other_end = parse_codec("lowrank:6")  # the receiver: another object, same bits
    assert torch.equal(other_end.decode(payload.clone(), x.shape, x.dtype, seed=9), want.view(x.shape))


def test_warm_start_converges_to_the_best_rank_r_approximation():
    """One power iteration from a random start falls short of the truncated SVD when the
    spectrum decays slowly; restarting from the previous Q (PowerSGD's warm start) reaches it."""
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(64, 32, generator=g))
    v, _ = torch.linalg.qr(torch.randn(48, 32, generator=g))
    x = (u * torch.logspace(0, -1.5, 32)) @ v.t()  # [64, 48], singular values 1 .. 0.03
    s = torch.linalg.svdvals(x.double())
    best = float(s[4:].norm() / s.norm())  # rank-4 truncation
    codec = parse_codec("lowrank:4:warm")
    cold = rel(codec.decode(codec.encode(x, seed=0), x.shape, x.dtype), x)
    start = None
    for step in range(12):
        payload = codec.encode(x, seed=step, start=start)
        start = codec.factors(payload, x.shape, x.dtype)[1]
    warm = rel(codec.decode(payload, x.shape, x.dtype), x)
    assert warm < best * 1.03 < cold * 0.97, (warm, best, cold)


def test_unusable_warm_columns_fall_back_to_the_random_start():
    x = rank_r(30, 20, 2, seed=3)
    codec = parse_codec("lowrank:2:warm")
    start = torch.zeros(20, 2)
    start[:, 1] = float("nan")
    y = codec.decode(codec.encode(x, seed=5, start=start), x.shape, x.dtype)
    assert rel(y, x) < 1e-2  # the seed's random columns took over: exact, no NaN


def _pair(method: str, spec: str, undo: bool = True):
    ends = [Channel(method, spec, (2, 12, 16), torch.float32, "cpu", boundary=0, direction="fwd", slot=0, seed=3)
            for _ in range(2)]
    for ch in ends:
        ch.undo = undo
    return ends


@pytest.mark.parametrize("method", ["direct", "ef", "ef21", "clapping-fu"])
def test_warm_factor_is_channel_state_on_both_ends(method):
    """Both ends keep the same Q after every step (also when the sender skips its decode:
    direct without measuring); it is checkpointed, rolls back with the step, and a cold codec
    keeps no state."""
    snd, rcv = _pair(method, "lowrank:2:warm")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 12, 16, generator=g)
    for step in range(4):
        x = base + 0.1 * torch.randn(2, 12, 16, generator=g)
        fresh = step == 0  # clapping-fu sends step 0 raw: no factor yet
        out = rcv.recv(snd.send(x, step=step, fresh=fresh, measure=step != 1), step=step, fresh=fresh)
        assert snd.factors.keys() == rcv.factors.keys()
        assert all(torch.equal(snd.factors[k], rcv.factors[k]) for k in snd.factors)
        snd.commit(), rcv.commit()
    assert set(rcv.factors) == {"lowrank:2:warm"}
    kept = rcv.factors["lowrank:2:warm"].clone()
    state = rcv.state_dict()
    assert torch.equal(state["factors"]["lowrank:2:warm"], kept)
    rcv.recv(snd.send(base, step=9, fresh=False), step=9, fresh=False)
    assert not torch.equal(rcv.factors["lowrank:2:warm"], kept)
    snd.rollback(), rcv.rollback()
    assert torch.equal(rcv.factors["lowrank:2:warm"], kept) and torch.equal(snd.factors["lowrank:2:warm"], kept)
    restored = _pair(method, "lowrank:2:warm")[1]
    restored.load_state_dict(state)
    assert torch.equal(restored.factors["lowrank:2:warm"], kept)
    restored.load_state_dict({k: v for k, v in state.items() if k != "factors"})  # an older checkpoint
    assert restored.factors == {}
    cold_snd, cold_rcv = _pair(method, "lowrank:2")
    cold_rcv.recv(cold_snd.send(base, step=0, fresh=True), step=0, fresh=True)
    assert cold_snd.factors == cold_rcv.factors == {} and out.shape == base.shape
