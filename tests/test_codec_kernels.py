"""Fused codec kernels (megaclap/compression/kernels): payloads and decodes bit-identical to the
torch reference; their building blocks equal to the torch ops they replace; the dispatch rule;
and every kernel compiled for sm_90 with no FMA, flush-to-zero or approximate division.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton). The interpreter emulates the kernels in
numpy, so it checks the arithmetic the kernels are written to do, not the GPU's
(docs/DECISIONS.md, "Fused codec kernels"); the PTX test checks what the compiler makes of it.
With CUDA the same tests run compiled on the GPU."""
import math
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton not installed (setup.py's test extra has it)")
import triton.language as tl  # noqa: E402

from megaclap.compression import kernels  # noqa: E402
from megaclap.compression.kernels import triton_common, triton_hquant  # noqa: E402
from megaclap.compression.codecs import parse_codec  # noqa: E402
from megaclap.compression.hquant import fwht, halving_sum  # noqa: E402
from megaclap.compression.shared_random import ROUNDING, stream_key  # noqa: E402
from tests.test_shared_random import py_hash, py_rounding  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = ["quant:2", "quant:4", "quant:8", "quant:4:sr", "quant:2:sr", "hquant:1", "hquant:2",
         "hquant:3", "hquant:4", "hquant:8", "hquant:1:sr", "hquant:4:128:sr", "hquant:3:16",
         "hquant:2:2", "randk:0.1", "randk:0.3:scale", "randk:0.1:q8", "randk:0.3:scale:q2",
         "topk:0.1", "topk:0.01"]
SHAPES = [(3, 37, 100), (5, 7), (9, 1)]  # odd widths; several blocks and programs
CHUNKED = (2, 65537)  # the sparse codecs' 65536-element chunks: two full and a short one
MODULE = {"quant": "triton_quant", "hquant": "triton_hquant", "randk": "triton_sparse",
          "topk": "triton_sparse"}


@pytest.fixture(scope="module")
def mods():
    """The kernel modules: interpreted on CPU (tests/conftest.py sets TRITON_INTERPRET=1 before
    anything imports triton), compiled on CUDA."""
    loaded = {name: kernels.load(name) for name in set(MODULE.values()) | {"triton_common"}}
    interpreted = type(loaded["triton_quant"]._encode).__name__ == "InterpretedFunction"
    if not CUDA and not interpreted:
        pytest.skip("no CUDA and triton was imported without TRITON_INTERPRET=1: run with it set")
    return loaded


def tensors(shape, dtype):
    """Gaussian with per-channel scales, heavy-tailed (Student-t, 2 dof), and all zeros."""
    g = torch.Generator().manual_seed(math.prod(shape))
    gauss = torch.randn(shape, generator=g) * torch.linspace(0.01, 30, shape[-1])
    chi2 = torch.randn((*shape, 2), generator=g).pow(2).sum(-1)
    heavy = torch.randn(shape, generator=g) / (chi2 / 2).sqrt()
    return [t.to(dtype).to(DEVICE) for t in (gauss, heavy, torch.zeros(shape))]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def reference(codec, x, seed):
    """Payload and decode of the torch code (the reference), whatever the device."""
    old = os.environ.get(kernels.ENV)
    os.environ[kernels.ENV] = "torch"
    try:
        payload = codec.encode(x, seed=seed)
        return payload, codec.decode(payload, x.shape, x.dtype, seed=seed)
    finally:
        os.environ.pop(kernels.ENV) if old is None else os.environ.__setitem__(kernels.ENV, old)


@pytest.mark.parametrize("spec", SPECS)
def test_payload_and_decode_bit_identical_to_torch(mods, spec):
    codec = parse_codec(spec)
    cases = [(shape, dtype) for shape in SHAPES for dtype in (torch.float32, torch.bfloat16)]
    if spec.startswith(("randk", "topk")):
        cases.append((CHUNKED, torch.bfloat16))  # the slowest case in the interpreter: one dtype
    for (shape, dtype), i in ((case, i) for case in cases for i in range(3)):
        x = tensors(shape, dtype)[i]
        want, want_x = reference(codec, x, seed=5 + i)
        got, got_x = kernels.fused_round_trip(codec, x, 5 + i, want)
        assert torch.equal(got, want), (spec, shape, dtype, i)
        assert torch.equal(bits(got_x), bits(want_x)), (spec, shape, dtype, i)


@pytest.mark.skipif(not CUDA, reason="compares the torch code on CUDA with CPU: needs a GPU")
@pytest.mark.parametrize("spec", ["quant:4", "quant:8:sr", "hquant:3", "hquant:1",
                                  "randk:0.3:scale:q2"])
def test_torch_code_on_cuda_equals_cpu(spec):
    """The reference itself is device-independent (IEEE divisions, fixed-order rotation)."""
    codec = parse_codec(spec)
    x = tensors((4, 33, 70), torch.bfloat16)[1]
    on_gpu, on_cpu = reference(codec, x, seed=2), reference(codec, x.cpu(), seed=2)
    assert torch.equal(on_gpu[0].cpu(), on_cpu[0]) and torch.equal(on_gpu[1].cpu(), on_cpu[1])


def test_fp16_tensors_too(mods):
    for spec in ("quant:4", "hquant:3", "randk:0.3:scale:q2"):
        codec = parse_codec(spec)
        x = tensors((4, 33, 70), torch.float16)[1]
        want, want_x = reference(codec, x, seed=3)
        got, got_x = kernels.fused_round_trip(codec, x, 3, want)
        assert torch.equal(got, want) and torch.equal(bits(got_x), bits(want_x)), spec


@triton.jit
def _probe(z_ptr, out_ptr, bf_ptr, rnd_ptr, U: tl.constexpr, BLK: tl.constexpr,
           LOG: tl.constexpr):
    """The shared building blocks on one tile: rotation, halving sum, bf16 bits, rounding."""
    offs = tl.arange(0, U)[:, None] * BLK + tl.arange(0, BLK)[None, :]
    z = tl.load(z_ptr + offs)
    tl.store(out_ptr + offs, triton_hquant._fwht(z, U, BLK, LOG))
    a = tl.abs(z)
    for s in tl.static_range(LOG):
        a = tl.sum(tl.reshape(a, (U, 2, BLK >> (s + 1))), axis=1)
    tl.store(out_ptr + U * BLK + tl.arange(0, U), tl.reshape(a, (U,)))
    tl.store(bf_ptr + offs, triton_common.bf16_bits(z))
    tl.store(rnd_ptr + offs, triton_common.round_even(z))
    tl.store(rnd_ptr + U * BLK + offs, triton_common.floor_exact(z))


def test_building_blocks_match_the_torch_ops(mods):
    """The rotation's butterflies and the halving sum round exactly as hquant.fwht/halving_sum
    (on data where another order, or a matmul, rounds differently); bf16_bits is torch's
    .to(bfloat16) on ties, subnormals and infinities; round_even/floor_exact are torch's."""
    u, blk = 8, 256
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(u, blk, generator=g) * torch.logspace(-3, 3, blk)).to(DEVICE)
    edge = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 2.5, -2.5, 0.5, -0.5,
                         1e-40, -1e-40, -3e-39, float("inf"), -float("inf"), 0.0, -0.0, 7.5, -7.5])
    z.view(-1)[: edge.numel()] = edge.to(DEVICE)
    out = torch.empty(u * blk + u, device=DEVICE)
    bf = torch.empty(u, blk, dtype=torch.int16, device=DEVICE)
    rnd = torch.empty(2 * u * blk, device=DEVICE)
    _probe[(1,)](z, out, bf, rnd, U=u, BLK=blk, LOG=8, **triton_common.LAUNCH)
    finite = z.clone()
    finite.view(-1)[10:12] = 0.0  # the rotation of +-inf is nan either way
    want = fwht(finite.clone())
    reverse = finite.clone()  # the same butterflies, h from blk / 2 down: other roundings
    for h in (128, 64, 32, 16, 8, 4, 2, 1):
        v = reverse.view(u, blk // (2 * h), 2, h)
        reverse = torch.stack([v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]], 2).view(u, blk)
    assert not torch.equal(reverse, want)  # the data tells rounding orders apart
    out2 = torch.empty_like(out)
    _probe[(1,)](finite, out2, bf, rnd, U=u, BLK=blk, LOG=8, **triton_common.LAUNCH)
    assert torch.equal(bits(out2[: u * blk].view(u, blk)), bits(want))
    assert torch.equal(out2[u * blk:], halving_sum(finite.abs()).view(-1))
    assert torch.equal(bf.view(torch.bfloat16), finite.to(torch.bfloat16))
    small = finite.clamp(-2 ** 21, 2 ** 21)
    _probe[(1,)](small, out2, bf, rnd, U=u, BLK=blk, LOG=8, **triton_common.LAUNCH)
    assert torch.equal(rnd[: u * blk].view(u, blk), small.round())
    assert torch.equal(rnd[u * blk:].view(u, blk), small.floor())


@triton.jit
def _draws(h_ptr, u_ptr, n, k0, k1, B: tl.constexpr):
    e = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    tl.store(h_ptr + e, triton_common.hash32(e.to(tl.uint32), k0, k1).to(tl.int64), mask=e < n)
    tl.store(u_ptr + e, triton_common.rounding_u(e + 65536 - 300, k0, k1), mask=e < n)


def test_hash_and_rounding_uniforms_match_shared_random(mods):
    key = stream_key(123456789, ROUNDING)
    n = 600
    h = torch.empty(n, dtype=torch.int64, device=DEVICE)
    u = torch.empty(n, device=DEVICE)
    _draws[(triton.cdiv(n, 256),)](h, u, n, *triton_common.key_words(key), B=256)
    assert h.tolist() == [py_hash(i, key) for i in range(n)]
    assert u.tolist() == [py_rounding(e + 65536 - 300, key) / 65536 for e in range(n)]


def test_dispatch_follows_the_environment(mods, monkeypatch):
    """auto: torch on CPU; triton: the kernels (here interpreted); torch: never the kernels; a
    bad value is one line naming the variable."""
    x = tensors((2, 5, 64), torch.float32)[0].cpu()
    codec = parse_codec("hquant:3")
    calls = []
    real = mods["triton_hquant"].encode
    monkeypatch.setattr(mods["triton_hquant"], "encode", lambda *a: calls.append(1) or real(*a))
    for value, fused_calls in (("auto", 0), ("torch", 0), ("triton", 1)):
        monkeypatch.setenv(kernels.ENV, value)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        if CUDA and value == "triton":
            continue  # CUDA kernels cannot take CPU tensors
        calls.clear()
        codec.encode(x, seed=1)
        assert len(calls) == fused_calls, value
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match=kernels.ENV):
        codec.encode(x, seed=1)


def test_nan_column_gives_a_nan_scale(mods):
    """A non-finite value must stay visible to the Channels' finite check: quant's absmax
    propagates NaN as torch's amax does (the codes of such a payload are not promised)."""
    codec = parse_codec("quant:8")
    x = tensors((6, 40), torch.float32)[0]
    x[3, 7] = float("nan")
    payload = mods["triton_quant"].encode(codec, x, 0)
    scale = payload[: 4 * 40].view(torch.float32)
    assert torch.isnan(scale[7]) and torch.isfinite(scale[torch.arange(40) != 7]).all()


def test_every_kernel_compiles_for_sm90_without_fma_ftz_or_approximate_division():
    """tools/kernel_ptx.py in a fresh process (no interpreter): representative variants."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    specs = "quant:4:sr,hquant:3,hquant:1,randk:0.3:scale:q2,topk:0.1"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "kernel_ptx.py"), "--specs",
                           specs, "--dtypes", "bf16"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "0 with violations" in done.stdout
