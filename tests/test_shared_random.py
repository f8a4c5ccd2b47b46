"""The counter-based hash that both ends of a boundary (and every device) draw from.

Fixed expected values pin the hash, the seed derivation and every draw derived from them: a
change to any constant, shift or derivation fails here before it silently changes payloads.
The values are checked twice: hard-coded, and against a pure-Python implementation of the
module docstring's definition (Python ints, no torch), over chunk boundaries too.
"""

import pytest
import torch

from megaclap.compression import shared_random as sr

M32 = 0xFFFFFFFF


def py_hash(i: int, key: tuple) -> int:
    """The docstring's per-element hash, in Python ints."""
    x = i ^ key[0]
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & M32
    x ^= key[1]
    x ^= x >> 15
    x = (x * 0x735A2D97) & M32
    return x ^ (x >> 15)


def py_rounding(e: int, key: tuple) -> int:
    """v of element e: two 16-bit values per hash within each block of 2^16 elements."""
    block, j = e >> 16, e & 0xFFFF
    h = py_hash((block << 15) | (j & 0x7FFF), key)
    return h >> 16 if j < 1 << 15 else h & 0xFFFF


def test_step_seed_and_stream_key_fixed_values():
    # step_seed is the derivation used before the hash existed: its values did not change
    assert sr.step_seed(0, 3, 1, "fwd", 2) == 4629406657184222033
    assert sr.step_seed(1234, 0, 0, "bwd", 0) == 5971143927630779112
    assert sr.step_seed(7, 1000, 3, "fwd", 7) == 7315927048049472420
    assert sr.stream_key(4629406657184222033, sr.RANDK) == (359090739, 2623823348)
    keys = {sr.stream_key(4629406657184222033, s) for s in (sr.RANDK, sr.SIGNS, sr.ROUNDING, sr.LOWRANK)}
    assert len(keys) == 4  # every use of one seed has its own key


def test_hash_fixed_values_and_pure_python_agree():
    key = (0x12345678, 0x9ABCDEF0)
    assert sr.hash_range(6, key, "cpu").tolist() == [3458281557, 763956516, 2628391402, 2558499308,
                                                     3939059631, 3807252400]
    # key 0, index 0: every step maps 0 to 0; index 1 by hand is the Python definition
    assert sr.hash_range(3, (0, 0), "cpu").tolist() == [0, 2261973619, 229111015]
    n = 3 * 65536 + 123  # several CPU chunks and a partial one
    got = sr.hash_range(n, key, "cpu")
    for i in list(range(40)) + list(range(65530, 65542)) + list(range(n - 40, n)) + list(range(0, n, 4999)):
        assert int(got[i]) == py_hash(i, key), i
    assert int(got.min()) >= 0 and int(got.max()) <= M32


def test_draws_follow_their_definitions():
    key = sr.stream_key(99, sr.SIGNS)
    n = 70001
    h = [py_hash(i, key) for i in range(n)]
    signs = sr.signs(n, key, "cpu")
    assert signs.dtype == torch.float32
    assert signs.tolist() == [1.0 if v < 1 << 31 else -1.0 for v in h]
    centred = sr.centred(n, key, "cpu")
    assert centred.tolist() == [((v >> 8) * 2 + 1 - (1 << 24)) * 2.0 ** -24 for v in h]
    assert -1 < float(centred.min()) and float(centred.max()) < 1
    lengths = torch.tensor([1, 2, 3, 10, 1000, (1 << 31) - 1] * 3)
    below = sr.below(lengths, key)
    assert below.tolist() == [(h[j] * int(ln)) >> 32 for j, ln in enumerate(lengths.tolist())]
    assert bool(((below >= 0) & (below < lengths)).all())


@pytest.mark.parametrize("n", [5, 32768, 40000, 65536, 140001, 2 * 65536 + 32768])
def test_rounding_values_follow_the_block_layout(n):
    key = sr.stream_key(5, sr.ROUNDING)
    got = torch.cat([v.clone() for _, v in sr.rounding_chunks(n, key, "cpu")])
    assert got.numel() == n and got.dtype == torch.int32
    probe = set(range(min(n, 40))) | set(range(max(0, n - 40), n))
    probe |= {e for e in range(32760, 32776)} | {e for e in range(65530, 65542)} | set(range(0, n, 997))
    for e in sorted(p for p in probe if p < n):
        assert int(got[e]) == py_rounding(e, key), e


def test_stochastic_floor_is_unbiased_and_exact():
    key = sr.stream_key(11, sr.ROUNDING)
    y = torch.full((200_000,), 0.3)
    sr.stochastic_floor_(y, key, -5, 5)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert abs(float(y.mean()) - 0.3) < 0.005  # binomial sd ~0.001
    # each element is floor(y + v * 2^-16) with v its rounding value
    y2 = torch.linspace(-3, 3, 1000)
    want = [min(5.0, max(-5.0, float(torch.floor(torch.tensor(y0) + py_rounding(e, key) * 2.0 ** -16))))
            for e, y0 in enumerate(y2.tolist())]
    assert sr.stochastic_floor_(y2.clone(), key, -5, 5).tolist() == want


def test_statistics_of_the_hash():
    """A mixer that forgot a step (e.g. the identity, or no key) fails these."""
    n = 1 << 18
    h = sr.hash_range(n, sr.stream_key(3, sr.RANDK), "cpu")
    bits = torch.stack([(h >> b) & 1 for b in range(32)]).float().mean(dim=1)  # [32]
    assert float((bits - 0.5).abs().max()) < 0.006  # 5 sd at n = 2^18
    u = (h >> 8).double() * 2.0 ** -24
    counts = torch.histc(u, bins=64, min=0, max=1)
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 130  # 63 degrees of freedom: p < 1e-6 above
    lag = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    other = (sr.hash_range(n, sr.stream_key(4, sr.RANDK), "cpu") >> 8).double() * 2.0 ** -24
    cross = torch.corrcoef(torch.stack([u, other]))[0, 1]
    assert abs(float(lag)) < 0.01 and abs(float(cross)) < 0.01  # sd ~0.002


def test_index_limit_is_one_line():
    with pytest.raises(ValueError, match="2\\^31") as err:
        next(sr.hash_chunks(sr.MAX_ELEMENTS + 1, (1, 2), "cpu"))
    assert "\n" not in str(err.value)
