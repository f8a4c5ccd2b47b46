"""Codecs: payload sizes, what each codec keeps, round trips, and spec errors."""

import math

import pytest
import torch

from megaclap.compression.codecs import CHUNK, parse_codec

SPECS = ["identity", "cast:bf16", "cast:fp16", "topk:0.1", "topk:0.01", "topk:1", "randk:0.1",
         "randk:0.3:scale", "quant:8", "quant:4", "quant:2", "quant:4:sr"]
SHAPES = [(70001,), (1, 7, 33), (2, 65536), (3, 65537), (1, 16, 24)]
DTYPES = [torch.float32, torch.bfloat16]


def expected_nbytes(spec: str, shape, dtype) -> int:
    """The payload-size formula, written independently of the implementation."""
    n, s = math.prod(shape), torch.empty((), dtype=dtype).element_size()
    name, *args = spec.split(":")
    if name == "identity":
        return n * s
    if name == "cast":
        return n * 2
    if name == "topk":
        r = float(args[0])
        lengths = [CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else [])
        return sum(math.ceil(round(r * ln, 9)) for ln in lengths) * (s + 2)
    if name == "randk":
        return math.ceil(round(float(args[0]) * n, 9)) * s
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
    ("quant:4:xx", "unknown codec"), ("topk", "unknown codec")])
def test_bad_specs_name_the_flag_and_allowed_values(spec, needle):
    with pytest.raises(ValueError, match="--pp-bwd-codec") as err:
        parse_codec(spec, "--pp-bwd-codec")
    assert needle in str(err.value) and "quant:B" in str(err.value)


def _quant_reference(bits, stochastic, x, seed):
    """quant's encode before issue 15 (six passes), kept to prove the payload did not change."""
    qmax, d = 2 ** (bits - 1) - 1, x.shape[-1]
    xf = x.reshape(-1, d).float()
    scale = xf.abs().amax(dim=0)
    inv = torch.where(scale > 0, qmax / scale, torch.zeros_like(scale))
    y = xf * inv
    if stochastic:
        gen = torch.Generator(device=x.device).manual_seed(seed % (1 << 63))
        q = torch.floor(y + torch.rand(y.shape, generator=gen, device=x.device))
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
