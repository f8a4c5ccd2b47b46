"""hquant: payload sizes, the error its bits imply, outliers vs quant:B, shared rotation, `:sr`,
the 1-bit sign codec, and a decode that is exact arithmetic (the same on every device)."""

import math
from contextlib import contextmanager

import pytest
import torch

from megaclap.compression.codecs import parse_codec

SPECS = ["hquant:2", "hquant:3", "hquant:4", "hquant:8", "hquant:3:16", "hquant:4:128:sr", "hquant:1",
         "hquant:1:sr", "hquant:1:16"]
SHAPES = [(1, 7, 33), (2, 16, 64), (70001,), (3, 5, 100), (1, 16, 24), (9, 1)]


def expected_nbytes(spec: str, shape) -> int:
    """The size formula of the module docstring, written independently (dtype-free)."""
    parts = spec.split(":")
    bits = int(parts[1])
    block = int(parts[2]) if len(parts) > 2 and parts[2] != "sr" else 64
    d = shape[-1]
    blk = min(block, 2 ** math.ceil(math.log2(d)) if d > 1 else 1)
    dp = math.ceil(d / blk) * blk
    rows = math.prod(shape) // d
    return 2 * rows * (dp // blk) + math.ceil(rows * dp * bits / 8)


def outliers(shape, seed=0) -> torch.Tensor:
    """Gaussian with 0.5% of entries 30-100x larger (random positions), as in activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 200)]
    flat[idx] *= 30 + 70 * torch.rand(idx.numel(), generator=g)
    return x


def heavy_tailed(shape, seed=0) -> torch.Tensor:
    """Student-t with 2 degrees of freedom (infinite variance)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g)
    chi2 = torch.randn((*shape, 2), generator=g).pow(2).sum(-1)
    return z / (chi2 / 2).sqrt()


@contextmanager
def one_thread():
    """Many tiny encodes: intra-op threads only add barrier waits (seconds on a loaded box)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def rel_err(spec, x, seed=7):
    c = parse_codec(spec)
    y = c.decode(c.encode(x, seed=seed), x.shape, x.dtype, seed=seed)
    return float((y.float() - x.float()).norm() / x.float().norm())


@pytest.mark.parametrize("spec", SPECS)
def test_payload_size_matches_formula(spec):
    codec = parse_codec(spec)
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            x = torch.randn(shape).to(dtype)
            payload = codec.encode(x, seed=3)
            want = expected_nbytes(spec, shape)
            assert payload.dtype == torch.uint8 and payload.dim() == 1
            assert payload.numel() == want == codec.payload_nbytes(shape, dtype), (spec, dtype, shape)
            y = codec.decode(payload, shape, dtype, seed=3)
            assert y.shape == x.shape and y.dtype == dtype


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("make", [torch.randn, outliers, heavy_tailed])
def test_error_within_the_bound_of_its_bits(bits, make):
    """Round to nearest moves each rotated value by <= delta / 2 = scale / L, and the rotation is
    orthonormal; the scale (rotated block absmax, bf16 rounded up) is at most the block's L2
    norm, so ||err|| <= 1.01 * sqrt(blk) / L * ||x|| whatever the seed; and <= the tighter
    sum-of-scales bound computed here with an independently built Hadamard matrix."""
    x = make((4, 32, 128))
    spec, levels, blk = f"hquant:{bits}", 2 ** bits - 1, 64
    codec = parse_codec(spec)
    y = codec.decode(codec.encode(x, seed=11), x.shape, x.dtype, seed=11)
    err = float((y - x).norm())
    assert err <= 1.01 * math.sqrt(blk) / levels * float(x.norm())
    h = torch.tensor([[(-1) ** bin(i & j).count("1") for j in range(blk)] for i in range(blk)],
                     dtype=torch.float64) / math.sqrt(blk)
    rot = (x.double().reshape(-1, 128) * codec.signs(128, 11, "cpu").double()).reshape(-1, blk) @ h
    scale = rot.abs().amax(dim=1) * (1 + 2 ** -7)
    assert err <= 1.01 * math.sqrt(float((blk * (scale / levels) ** 2).sum()))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("make", [outliers, heavy_tailed])
def test_lower_error_than_quant_on_outliers(bits, make):
    x = make((4, 64, 128), seed=bits)
    h, q = rel_err(f"hquant:{bits}", x), rel_err(f"quant:{bits}", x)
    assert h < 0.8 * q, (bits, h, q)


def test_both_ends_derive_the_same_rotation():
    """A receiver is a separate codec object: same seed -> the sender's own decode, bit for bit;
    another seed (another step or slot) -> other signs, and decoding with them is wrong."""
    x = torch.randn(2, 8, 96)
    sender, receiver = parse_codec("hquant:4"), parse_codec("hquant:4")
    payload = sender.encode(x, seed=123)
    mine = sender.decode(payload, x.shape, x.dtype, seed=123)
    assert torch.equal(receiver.decode(payload.clone(), x.shape, x.dtype, seed=123), mine)
    assert torch.equal(receiver.signs(128, 123, "cpu"), sender.signs(128, 123, "cpu"))
    assert not torch.equal(sender.signs(128, 124, "cpu"), sender.signs(128, 123, "cpu"))
    wrong = receiver.decode(payload, x.shape, x.dtype, seed=124)
    assert float((wrong - x).norm()) > 5 * float((mine - x).norm())


def test_stochastic_rounding_is_unbiased():
    """Each row: one large entry and small ones. Rotated, every value sits near +-scale, so round
    to nearest snaps them there and loses the small entries on every draw (a bias that averaging
    over seeds does not remove); stochastic rounding keeps them on average."""
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(64, 16, generator=g)
    x[:, 0] = 8.0
    means = {}
    for spec in ("hquant:2:16", "hquant:2:16:sr"):
        c = parse_codec(spec)
        acc = torch.zeros_like(x)
        with one_thread():
            for seed in range(300):
                acc += c.decode(c.encode(x, seed=seed), x.shape, x.dtype, seed=seed)
        means[spec] = float((acc / 300 - x)[:, 1:].norm() / x[:, 1:].norm())
    assert means["hquant:2:16:sr"] < 0.15, means
    assert means["hquant:2:16"] > 0.5, means


@pytest.mark.parametrize("spec, what", [("hquant:5", "bits"), ("hquant:4:48", "block"),
                                        ("hquant", "bits"), ("hquant:4:64:sr:x", "block")])
def test_bad_specs_name_the_flag(spec, what):
    with pytest.raises(ValueError, match=rf"--pp-fwd-codec.*{what}"):
        parse_codec(spec, "--pp-fwd-codec")


def sylvester64(blk: int) -> torch.Tensor:
    """+-1 Sylvester matrix, built entry by entry (float64)."""
    return torch.tensor([[(-1) ** bin(i & j).count("1") for j in range(blk)] for i in range(blk)],
                        dtype=torch.float64)


def test_decode_is_exact_integer_arithmetic():
    """decode = fp32(fp32(z * fp32(scale * c)) * sign), z = (q - L/2) @ S summed exactly: a float64
    reference rounds once per step and must agree bit for bit (a float rotation would not)."""
    x = outliers((3, 10, 96), seed=5)
    for spec, blk in (("hquant:4", 64), ("hquant:8:32", 32), ("hquant:1", 64), ("hquant:3:128", 128)):
        codec = parse_codec(spec)
        payload = codec.encode(x, seed=21)
        rows, d, blk, dp = codec.geometry(x.shape)
        nb, levels = dp // blk, codec.levels
        scale = payload[: 2 * rows * nb].view(torch.bfloat16).double().view(-1, 1)
        bits = [(int(b) >> i) & 1 for b in payload[2 * rows * nb:].tolist() for i in range(8)]
        q = torch.tensor([sum(bits[j * codec.bits + i] << i for i in range(codec.bits))
                          for j in range(rows * dp)], dtype=torch.float64).view(-1, blk)
        z = (q - levels / 2) @ sylvester64(blk)
        c = float(torch.tensor(2 / (levels * math.sqrt(blk)), dtype=torch.float32))
        f = (scale * c).float().double()
        want = (z * f).float().double().view(rows, dp) * codec.signs(dp, 21, "cpu").double()
        got = codec.decode(payload, x.shape, x.dtype, seed=21)
        assert torch.equal(got, want[:, :d].float().view(x.shape)), spec


def test_one_bit_sends_signs_with_the_mean_magnitude():
    """hquant:1 (round to nearest): each rotated block becomes sign(y) * mean|y| (bf16), the
    least-squares scale for fixed signs; it beats the absmax scale the other widths use."""
    x = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(2))
    codec = parse_codec("hquant:1")
    got = codec.decode(codec.encode(x, seed=3), x.shape, x.dtype, seed=3).double()
    h = sylvester64(64) / 8
    y = (x.double().view(-1, 64) * codec.signs(64, 3, "cpu").double()) @ h  # [32, 64]
    mean = y.abs().mean(dim=1, keepdim=True).to(torch.bfloat16).double()
    want = ((torch.where(y > 0, 1.0, -1.0) * mean) @ h).view(x.shape) * codec.signs(64, 3, "cpu").double()
    assert torch.allclose(got, want, atol=1e-5)
    absmax = ((torch.where(y > 0, 1.0, -1.0) * y.abs().amax(1, keepdim=True)) @ h).view(x.shape)
    absmax = absmax * codec.signs(64, 3, "cpu").double()
    err, err_absmax = float((got - x).norm()), float((absmax - x).norm())
    assert err < 0.7 * float(x.norm()) and err < 0.6 * err_absmax  # Gaussian: sqrt(1 - 2/pi) = 0.6
    assert codec.payload_nbytes(x.shape, x.dtype) * 8 / x.numel() == 1.25


def test_one_bit_stochastic_is_unbiased():
    """hquant:1:sr keeps +absmax with probability (1 + y/absmax) / 2: the mean over seeds tends
    to x; round to nearest stays biased (its mean over rotations is ~2/pi of x)."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    means = {}
    for spec in ("hquant:1", "hquant:1:sr"):
        c = parse_codec(spec)
        acc = torch.zeros_like(x, dtype=torch.float64)
        with one_thread():
            for seed in range(400):
                acc += c.decode(c.encode(x, seed=seed), x.shape, x.dtype, seed=seed).double()
        means[spec] = float((acc / 400 - x).norm() / x.norm())
    assert means["hquant:1:sr"] < 0.2, means  # ~2.5 / sqrt(400) = 0.125 expected
    assert means["hquant:1"] > 0.3, means  # ~1 - 2/pi = 0.36


@pytest.mark.parametrize("make", [torch.randn, outliers, heavy_tailed])
def test_one_bit_error_never_exceeds_the_message(make):
    """Sign times the least-squares scale is a projection: ||x_hat - x|| <= ||x|| whatever the
    tails (up to the bf16 rounding of the scale)."""
    x = make((4, 32, 128))
    codec = parse_codec("hquant:1")
    y = codec.decode(codec.encode(x, seed=2), x.shape, x.dtype, seed=2)
    assert float((y - x).norm()) <= 1.01 * float(x.norm())
