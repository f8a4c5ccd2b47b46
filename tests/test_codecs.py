"""Codecs: payload sizes, what each codec keeps, round trips, spec errors, and that every shared
draw comes from the counter-based hash (identical across dtypes, no device RNG)."""

import math

import pytest
import torch

from megaclap.compression.codecs import CHUNK, parse_codec
from megaclap.compression.shared_random import RANDK, ROUNDING, stream_key
from tests.test_shared_random import py_hash, py_rounding

SPECS = ["identity", "cast:bf16", "cast:fp16", "topk:0.1", "topk:0.01", "topk:1", "randk:0.1",
         "randk:0.3:scale", "quant:8", "quant:4", "quant:2", "quant:4:sr", "topk:0.05:q8", "topk:0.1:q4",
         "topk:1:q2", "randk:0.1:q8", "randk:0.3:scale:q2"]
SHAPES = [(70001,), (1, 7, 33), (2, 65536), (3, 65537), (1, 16, 24), (2, 3, 5), (3,)]
DTYPES = [torch.float32, torch.bfloat16]


def expected_nbytes(spec: str, shape, dtype) -> int:
    """The payload-size formula, written independently of the implementation."""
    n, s = math.prod(shape), torch.empty((), dtype=dtype).element_size()
    name, *args = spec.split(":")
    qbits = int(args[-1][1:]) if args and args[-1].startswith("q") else 0
    chunks = [CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else [])
    if name == "identity":
        return n * s
    if name == "cast":
        return n * 2
    if name == "topk":
        kept = [math.ceil(round(float(args[0]) * ln, 9)) for ln in chunks]
        if not qbits:
            return sum(kept) * (s + 2)
        last_width = max(1, (chunks[-1] - 1).bit_length())  # the last chunk's index width
        indices = 2 * sum(kept[:-1]) + math.ceil(kept[-1] * last_width / 8)
        return 4 * len(chunks) + indices + math.ceil(sum(kept) * qbits / 8)
    if name == "randk":
        k = math.ceil(round(float(args[0]) * n, 9))
        return 4 * len(chunks) + math.ceil(k * qbits / 8) if qbits else k * s
    bits = int(args[0])
    return 4 * shape[-1] + math.ceil(n * bits / 8)


@pytest.mark.parametrize("spec", SPECS)
def test_payload_size_matches_formula(spec):
    codec = parse_codec(spec)
    for dtype in DTYPES:
        for shape in SHAPES:
            x = torch.randn(shape).to(dtype)
            payload = codec.encode(x, seed=3)
            want = expected_nbytes(spec, shape, dtype)
            assert payload.dtype == torch.uint8 and payload.dim() == 1
            assert payload.numel() == want == codec.payload_nbytes(shape, dtype), (spec, dtype, shape)
            y = codec.decode(payload, shape, dtype, seed=3)
            assert y.shape == x.shape and y.dtype == dtype


def test_identity_round_trip_is_bit_exact():
    codec = parse_codec("identity")
    for dtype in DTYPES + [torch.float16]:
        x = torch.randn(3, 5, 7).to(dtype)
        x[0, 0, :4] = torch.tensor([float("inf"), float("nan"), -0.0, 1e-40]).to(dtype)
        y = codec.decode(codec.encode(x), x.shape, dtype)
        assert torch.equal(y.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           x.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_cast_is_a_plain_down_cast():
    x = torch.randn(4, 33)
    for spec, target in (("cast:bf16", torch.bfloat16), ("cast:fp16", torch.float16)):
        codec = parse_codec(spec)
        y = codec.decode(codec.encode(x), x.shape, x.dtype)
        assert torch.equal(y, x.to(target).to(x.dtype))
        assert codec.is_lossless(target) and not codec.is_lossless(torch.float32)


@pytest.mark.parametrize("n", [1000, 70001, 2 * CHUNK])
def test_topk_keeps_exactly_the_largest_k_per_chunk(n):
    torch.manual_seed(0)
    x = (torch.randperm(n).float() + 1) * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)  # distinct |x|
    codec = parse_codec("topk:0.1")
    y = codec.decode(codec.encode(x), x.shape, x.dtype)
    for start in range(0, n, CHUNK):
        chunk, kept = x[start:start + CHUNK], y[start:start + CHUNK]
        k = math.ceil(round(0.1 * chunk.numel(), 9))
        want = torch.zeros_like(chunk)
        top = chunk.abs().topk(k).indices
        want[top] = chunk[top]
        assert torch.equal(kept, want)
        assert int((kept != 0).sum()) == k


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_error_within_half_a_step(bits):
    torch.manual_seed(1)
    x = torch.randn(3, 50, 33) * torch.linspace(0.1, 10, 33)  # channels of different scales
    codec = parse_codec(f"quant:{bits}")
    y = codec.decode(codec.encode(x), x.shape, x.dtype)
    step = x.abs().amax(dim=(0, 1)) / (2 ** (bits - 1) - 1)  # [33]: one scale per channel
    assert ((y - x).abs() <= step / 2 * (1 + 1e-5)).all()
    assert torch.allclose(x.abs().amax(dim=(0, 1)), y.abs().amax(dim=(0, 1)), rtol=1e-6)  # absmax kept


def test_quant_stochastic_rounding_is_seeded_and_unbiased():
    x = torch.full((2000, 4), 0.3)
    x[0] = 1.0  # absmax 1 -> step 1/7 at 4 bits; 0.3 sits between levels 2/7 and 3/7
    codec = parse_codec("quant:4:sr")
    a = codec.decode(codec.encode(x, seed=5), x.shape, x.dtype, seed=5)
    b = codec.decode(codec.encode(x, seed=5), x.shape, x.dtype, seed=5)
    c = codec.decode(codec.encode(x, seed=6), x.shape, x.dtype, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a - x).abs() <= 1 / 7 + 1e-6).all()
    assert abs(a[1:].mean().item() - 0.3) < 0.01  # deterministic rounding would give 2/7 = 0.2857


def test_randk_indices_shared_by_seed_and_differ_across_seeds():
    x = torch.randn(10, 1000)
    codec = parse_codec("randk:0.1")
    p = codec.encode(x, seed=11)
    y = codec.decode(p, x.shape, x.dtype, seed=11)
    mask = y != 0
    assert int(mask.sum()) == 1000 and torch.equal(y[mask], x[mask])  # receiver put values in place
    assert torch.equal(mask.reshape(-1).nonzero().flatten().sort().values,
                       codec.indices(x.numel(), 11, x.device).sort().values)
    other = codec.decode(codec.encode(x, seed=12), x.shape, x.dtype, seed=12) != 0
    assert (mask & other).sum() < 300  # independent draws overlap ~10%
    scaled = parse_codec("randk:0.1:scale")
    z = scaled.decode(scaled.encode(x, seed=11), x.shape, x.dtype, seed=11)
    assert torch.allclose(z[mask], x[mask] * 10)


def test_decode_from_an_unaligned_slice():
    x = torch.randn(4, 33)
    for spec in ("identity", "topk:0.2", "quant:4", "randk:0.5"):
        codec = parse_codec(spec)
        p = codec.encode(x, seed=1)
        wire = torch.cat([torch.zeros(3, dtype=torch.uint8), p])[3:]  # storage offset 3
        want = codec.decode(p, x.shape, x.dtype, seed=1)
        assert torch.equal(codec.decode(wire, x.shape, x.dtype, seed=1), want)


@pytest.mark.parametrize("spec,needle", [
    ("gzip", "unknown codec"), ("topk:0", "0 < R <= 1"), ("topk:1.5", "0 < R <= 1"),
    ("randk:abc", "0 < R <= 1"), ("quant:3", "2, 4 or 8"), ("cast:fp8", "unknown codec"),
    ("quant:4:xx", "unknown codec"), ("topk", "unknown codec"), ("topk:0.1:q3", "q2, q4 or q8"),
    ("randk:0.1:scale:q16", "q2, q4 or q8"), ("topk:0.1:scale", "unknown codec"), ("lowrank:0", "rank R >= 1"),
    ("lowrank:2:cold", "rank R >= 1"), ("lowrank", "rank R >= 1"), ("hquant:5", "1, 2, 3, 4 or 8"),
    ("hquant:4:8192", "from 2 to 4096")])
def test_bad_specs_name_the_flag_and_allowed_values(spec, needle):
    with pytest.raises(ValueError, match="--pp-bwd-codec") as err:
        parse_codec(spec, "--pp-bwd-codec")
    assert needle in str(err.value) and "quant:B" in str(err.value)


def _quant_reference(bits, stochastic, x, seed):
    """quant's encode before issue 15 (six passes), kept to prove the payload did not change;
    `:sr` with the rounding uniforms of the shared hash (issue 23), computed in pure Python."""
    qmax, d = 2 ** (bits - 1) - 1, x.shape[-1]
    xf = x.reshape(-1, d).float()
    scale = xf.abs().amax(dim=0)
    inv = torch.where(scale > 0, qmax / scale, torch.zeros_like(scale))
    y = xf * inv
    if stochastic:
        key = stream_key(seed, ROUNDING)
        u = torch.tensor([py_rounding(e, key) * 2.0 ** -16 for e in range(y.numel())]).view(y.shape)
        q = torch.floor(y + u)
    else:
        q = torch.round(y)
    codes = (q.clamp_(-qmax, qmax) + qmax).to(torch.uint8).reshape(-1)
    per = 8 // bits
    codes = torch.cat([codes, codes.new_zeros((-codes.numel()) % per)]).view(-1, per)
    packed = codes[:, 0].clone()
    for j in range(1, per):
        packed |= codes[:, j] << (bits * j)
    return torch.cat([scale.reshape(-1).view(torch.uint8), packed]), scale


@pytest.mark.parametrize("spec", ["quant:2", "quant:4", "quant:8", "quant:4:sr", "quant:8:sr"])
def test_quant_payload_identical_to_the_six_pass_encoder(spec):
    torch.manual_seed(2)
    bits, sr = int(spec.split(":")[1]), spec.endswith(":sr")
    codec = parse_codec(spec)
    for dtype in DTYPES:
        x = (torch.randn(3, 41, 24) * torch.linspace(0.01, 30, 24)).to(dtype)
        x[:, :, 5] = 0.0  # a zero channel (scale 0)
        x[0, 0, 7] = x[:, :, 7].abs().max() * 0.5 / ((2 ** (bits - 1) - 1))  # an exact half step
        want, scale = _quant_reference(bits, sr, x, seed=9)
        got = codec.encode(x, seed=9)
        assert torch.equal(got, want), (spec, dtype)
        if not sr:  # decode: the levels times scale / qmax, in fp32, cast once
            qmax = 2 ** (bits - 1) - 1
            q = torch.round(x.float() * torch.where(scale > 0, qmax / scale, 0.0))
            ref = (q * (scale / qmax)).to(dtype)
            assert torch.equal(codec.decode(got, x.shape, dtype), ref)


def test_randk_draw_is_stratified_distinct_and_needs_no_permutation(monkeypatch):
    def no_randperm(*a, **k):
        raise AssertionError("randk must not draw a permutation of n")
    monkeypatch.setattr(torch, "randperm", no_randperm)
    n, ratio = 70001, 0.03
    sender, receiver = parse_codec(f"randk:{ratio}"), parse_codec(f"randk:{ratio}")  # two ends, no shared memo
    x = torch.randn(n)
    y = receiver.decode(sender.encode(x, seed=5), (n,), x.dtype, seed=5)
    idx = sender.indices(n, 5, x.device)
    k = math.ceil(ratio * n)
    assert idx.numel() == k and torch.equal(idx, receiver.indices(n, 5, x.device))
    assert bool((idx[1:] > idx[:-1]).all())  # ascending, hence distinct
    starts, lengths = sender.strata(n, x.device)
    assert bool(((idx >= starts) & (idx < starts + lengths)).all()) and int(lengths.sum()) == n
    assert torch.equal(y[idx], x[idx]) and int((y != 0).sum()) == k
    hits = torch.zeros(n)  # every position equally likely: inclusion frequency ~ ratio
    for seed in range(200):
        hits[sender.indices(n, seed, x.device)] += 1
    per_block = hits[: n - n % 1000].view(-1, 1000).mean(1) / 200  # [70] blocks of 1000 positions
    assert (per_block - ratio).abs().max() < 0.01
    scaled = parse_codec(f"randk:{ratio}:scale")
    z = scaled.decode(scaled.encode(x, seed=5), (n,), x.dtype, seed=5)
    assert torch.allclose(z[idx], x[idx] * lengths.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_ties_go_to_the_lowest_index_in_ascending_order(dtype):
    """Magnitudes from a few levels: every chunk's threshold is tied many times. The kept set is
    the k largest with ties to the lowest in-chunk index (a pure-Python sort by (-|x|, index)),
    whatever torch.topk's own order; NaN counts as larger than any number."""
    g = torch.Generator().manual_seed(4)
    n = CHUNK + 5000
    x = (torch.randint(1, 6, (n,), generator=g) * torch.where(torch.rand(n, generator=g) < 0.5, -1, 1)).to(dtype)
    x[17] = float("nan")
    codec = parse_codec("topk:0.3")
    payload = codec.encode(x)
    for start in range(0, n, CHUNK):
        chunk = x[start:start + CHUNK]
        mags = [float("inf") if v != v else abs(v) for v in chunk.float().tolist()]
        k = math.ceil(round(0.3 * chunk.numel(), 9))
        want = sorted(sorted(range(chunk.numel()), key=lambda j: (-mags[j], j))[:k])
        got = codec.select(x.reshape(-1))
        got = [p - start for p in got.tolist() if start <= p < start + CHUNK]
        assert got == want  # ascending, and the lowest indices among ties
    y = codec.decode(payload, x.shape, dtype)
    assert torch.isnan(y[17]) and int((y != 0).sum()) == codec.num_kept(n)


def _student_t(n: int, seed: int) -> torch.Tensor:
    """Heavy tails: Student-t with 2 degrees of freedom (infinite variance)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) / (torch.randn(n, 2, generator=g).pow(2).sum(-1) / 2).sqrt()


@pytest.mark.parametrize("heavy", [False, True])
@pytest.mark.parametrize("spec", ["topk:0.2:q8", "topk:0.2:q4", "randk:0.2:q8", "randk:0.2:q2"])
def test_sparse_quantised_values_within_half_a_step_of_their_chunk(spec, heavy):
    """Values sit at the unquantised codec's positions, each off by at most half a step of its
    chunk's absmax scale (the two chunks' values differ 100x in size: a shared scale fails)."""
    torch.manual_seed(3)
    x = _student_t(CHUNK + 9000, 3) if heavy else torch.randn(CHUNK + 9000)
    x[CHUNK:] *= 100.0  # the second chunk's scale is 100x the first's
    bits = int(spec.split(":q")[1])
    plain = parse_codec(spec.split(":q")[0])
    codec = parse_codec(spec)
    y = codec.decode(codec.encode(x, seed=8), x.shape, x.dtype, seed=8)
    ref = plain.decode(plain.encode(x, seed=8), x.shape, x.dtype, seed=8)
    assert not bool(((y != 0) & (ref == 0)).any())  # only the plain codec's positions (small ones may round to 0)
    for part_y, part_ref in ((y[:CHUNK], ref[:CHUNK]), (y[CHUNK:], ref[CHUNK:])):
        step = part_ref.abs().max() / (2 ** (bits - 1) - 1)
        assert float((part_y - part_ref).abs().max()) <= float(step) / 2 * (1 + 1e-5)


@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.25:q4", "quant:4:sr", "quant:8:sr", "hquant:4",
                                  "hquant:2:sr", "hquant:1:sr", "lowrank:3"])
def test_shared_draws_are_identical_across_dtypes_and_need_no_device_rng(spec, monkeypatch):
    """bf16-representable values in fp32, bf16 and fp64 give the same positions, signs and
    rounding, so the same codes: nothing depends on the dtype. No torch RNG is touched."""
    x = torch.randn(3, 40, 48).to(torch.bfloat16)
    for name in ("rand", "randn", "randint", "randperm", "rand_like", "bernoulli", "Generator"):
        monkeypatch.setattr(torch, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError(name)))
    outs = []
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        codec = parse_codec(spec)
        xd = x.to(dtype)
        payload = codec.encode(xd, seed=77)
        outs.append(codec.decode(payload, x.shape, dtype, seed=77).double())
    assert torch.equal(outs[0], outs[2])  # fp32 and fp64: same codes, same fp32 decode math
    assert torch.equal(outs[0] != 0, outs[1] != 0)
    assert float((outs[0] - outs[1]).abs().max()) <= float(outs[0].abs().max()) * 2 ** -7


def test_randk_positions_fixed_values():
    """Positions for one seed, pinned and re-derived in pure Python (stratum j of 100 elements:
    100 j + (h_j * 100) >> 32): a change to the hash or its use moves them."""
    positions = parse_codec("randk:0.01").indices(100_000, 123, "cpu")
    assert positions[:6].tolist() == [1, 196, 252, 376, 481, 553]
    key = stream_key(123, RANDK)
    assert positions.tolist() == [100 * j + ((py_hash(j, key) * 100) >> 32) for j in range(1000)]


@pytest.mark.parametrize("width", list(range(1, 17)))
def test_bit_packer_is_one_little_endian_bitstream(width):
    """Value j sits at bits [j w, (j + 1) w) of the stream, lowest bit first (built here bit by
    bit in Python), for every width the codecs use; uint8 and int64 inputs alike."""
    from megaclap.compression.bitpack import pack_bits, unpack_bits
    g = torch.Generator().manual_seed(width)
    values = torch.randint(0, 2 ** width, (37,), generator=g)
    stream = [(v >> b) & 1 for v in values.tolist() for b in range(width)]
    stream += [0] * (-len(stream) % 8)
    want = [sum(stream[8 * i + b] << b for b in range(8)) for i in range(len(stream) // 8)]
    for given in ([values, values.to(torch.uint8)] if width <= 8 else [values]):
        packed = pack_bits(given, width)
        assert packed.tolist() == want
        assert unpack_bits(packed, width, 37).long().tolist() == values.tolist()


@pytest.mark.parametrize("spec", ["topk:0.05:q8", "randk:0.1:scale:q4", "quant:2:sr", "hquant:1", "hquant:1:sr",
                                  "hquant:3:16:sr", "lowrank:4", "lowrank:4:warm"])
def test_the_receiver_decodes_what_the_sender_decodes(spec):
    """A receiver is another codec object with only the payload and the seed: its decode equals
    the sender's, bit for bit, on Gaussian and heavy-tailed messages."""
    for x in (torch.randn(4, 33, 40), _student_t(4 * 33 * 40, 1).view(4, 33, 40)):
        sender, receiver = parse_codec(spec), parse_codec(spec)
        payload = sender.encode(x, seed=31)
        mine = sender.decode(payload, x.shape, x.dtype, seed=31)
        assert torch.equal(receiver.decode(payload.clone(), x.shape, x.dtype, seed=31), mine)
        assert bool(mine.isfinite().all())
