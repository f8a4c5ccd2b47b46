"""Channels: a sender and a receiver endpoint in one process, the payload passed between them."""

import argparse
import math

import pytest
import torch

from megaclap.compression import AqsgdStore, Channel, parse_codec, step_seed
from megaclap.config.compression import (CompressionConfig, add_compression_args, default_bwd_method,
                                         validate_compression)

SHAPE = (2, 6, 16)  # [b, s, h]
STATEFUL = ["ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu"]
ALL = ["none", "direct"] + STATEFUL


def make_pair(method, codec, shape=SHAPE, dtype=torch.float32, slots=1, path=None, **kw):
    """[(sender, receiver)] per slot; aqsgd slots of one end share that end's store."""
    stores = [AqsgdStore(shape[1:], dtype, "cpu", path=p) if method == "aqsgd" else None
              for p in ((None, None) if path is None else (f"{path}/send", f"{path}/recv"))]
    return [tuple(Channel(method, codec, shape, dtype, "cpu", boundary=1, direction="fwd", slot=i,
                          store=st, seed=7, **kw) for st in stores) for i in range(slots)]


def transfer(sender, receiver, x, step, fresh, ids=None):
    """One hop through a receive buffer of the announced size; returns (payload, x_hat)."""
    payload = sender.send(x, step=step, fresh=fresh, sample_ids=ids)
    buf = receiver.empty_payload(fresh=fresh, sample_ids=ids)
    assert buf.shape == payload.shape and buf.dtype == payload.dtype
    buf.copy_(payload)
    return payload, receiver.recv(buf, step=step, fresh=fresh, sample_ids=ids)


def bits(t):
    return t.contiguous().view(torch.uint8)


def run_steps(pairs, steps, seed=0, start=0, dtype=torch.float32, pool=9):
    """Drive every slot for `steps` steps of changing inputs, random fresh flags and lazily
    repeated sample ids (so aqsgd microbatches mix first and later visits)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(2 * len(pairs)).reshape(len(pairs), 2)
    outs = []
    for t in range(start, start + steps):
        fresh = t == 0 or bool(torch.rand((), generator=gen) < 0.4)
        if fresh:
            ids = torch.randperm(pool, generator=gen)[: ids.numel()].reshape(ids.shape)
        for slot, (snd, rcv) in enumerate(pairs):
            x = (torch.randn(SHAPE, generator=gen) + t * 0.1).to(dtype)
            outs.append(transfer(snd, rcv, x, t, fresh, ids[slot])[1])
    return outs


def assert_same_state(snd, rcv):
    """The state each method keeps exists where it should and is bit-identical on both ends."""
    if snd.method in ("ef21", "clapping-fc", "clapping-fu"):
        assert snd.m is not None and rcv.m is not None and torch.equal(bits(snd.m), bits(rcv.m))
    else:
        assert snd.m is None and rcv.m is None
    if snd.method == "ef" and not snd.lossless:  # the residual is the sender's alone
        assert snd.e is not None and torch.isfinite(snd.e).all() and snd.e.abs().sum() > 0
    else:
        assert snd.e is None
    assert rcv.e is None
    if snd.method == "aqsgd":
        ids_s, ids_r = snd.store.state_dict()["ids"], rcv.store.state_dict()["ids"]
        assert len(ids_s) > 0 and sorted(ids_s.tolist()) == sorted(ids_r.tolist())
        a, b = snd.store.read(snd.store.find(ids_s)), rcv.store.read(rcv.store.find(ids_s))
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("codec", ["topk:0.2", "randk:0.3:scale", "quant:4:sr", "cast:bf16"])
@pytest.mark.parametrize("method", STATEFUL)
def test_references_stay_bit_identical(method, codec, dtype):
    pairs = make_pair(method, codec, dtype=dtype, slots=2)
    outs = run_steps(pairs, 20, dtype=dtype)
    for slot, (snd, rcv) in enumerate(pairs):
        assert_same_state(snd, rcv)
        assert (snd.stats.rel_err > 0) == (not snd.lossless)  # a lossy codec leaves an error
        if snd.m is not None:  # the receiver used exactly the shared reference
            assert torch.equal(bits(outs[-len(pairs) + slot]), bits(snd.m))


@pytest.mark.parametrize("method", ALL)
def test_identity_codec_and_none_are_bit_exact(method):
    pairs = make_pair(method, "identity", dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    for t in range(6):
        x = torch.randn(SHAPE, generator=gen).to(torch.bfloat16)
        x[0, 0, 0] = -0.0
        payload, x_hat = transfer(*pairs[0], x, t, t % 3 == 0, torch.tensor([t % 4, 9]))
        assert torch.equal(bits(x_hat), bits(x))
        assert payload.dtype == (torch.bfloat16 if method == "none" else torch.uint8)
    assert pairs[0][0].stats.rel_err == 0.0 and pairs[0][0].stats.ratio == 1.0


def test_none_sends_the_tensor_itself():
    snd, rcv = make_pair("none", "identity")[0]
    x = torch.randn(SHAPE)
    payload = snd.send(x, step=0, fresh=True)
    assert payload.data_ptr() == x.data_ptr() and payload.shape == x.shape  # no copy
    assert rcv.recv(payload, step=0, fresh=True) is payload


def drift_errors(method, steps=50):
    """Relative error per step on the same x drifting slowly (fixed batch, p = 0, small lr)."""
    gen = torch.Generator().manual_seed(0)
    x0, d = torch.randn(2, 64, 64, generator=gen), torch.randn(2, 64, 64, generator=gen)
    snd, rcv = make_pair(method, "topk:0.1", shape=x0.shape)[0]
    errs = []
    for t in range(steps):
        x = x0 + 1e-4 * t * d
        _, x_hat = transfer(snd, rcv, x, t, t == 0)
        errs.append(snd.stats.rel_err)
        assert math.isclose(errs[-1], float((x_hat - x).norm() / x.norm()), rel_tol=1e-4, abs_tol=1e-7)
    return errs


def test_clapping_converges_while_direct_stays_at_codec_error():
    codec_err = float(torch.tensor(drift_errors("direct")).min())
    assert codec_err > 0.5  # topk:0.1 of a Gaussian loses ~75% of the norm
    assert max(drift_errors("clapping-fu")) < 1e-3
    fc = drift_errors("clapping-fc")  # starts at the codec's error, then tracks x and stays there
    assert fc[0] > 0.5 and all(a > b for a, b in zip(fc[:10], fc[1:10])) and max(fc[10:]) < 1e-3


def test_clapping_fu_bytes_raw_on_fresh_compressed_otherwise():
    snd, rcv = make_pair("clapping-fu", "topk:0.1", dtype=torch.bfloat16)[0]
    raw = math.prod(SHAPE) * 2
    comp = parse_codec("topk:0.1").payload_nbytes(SHAPE, torch.bfloat16)
    flags = [True, False, False, True, False, True, True, False, False, False]
    for t, fresh in enumerate(flags):
        payload, _ = transfer(snd, rcv, torch.randn(SHAPE).to(torch.bfloat16), t, fresh)
        assert payload.numel() == (raw if fresh else comp)
    n_fresh = sum(flags)
    assert snd.stats.payload_bytes == n_fresh * raw + (len(flags) - n_fresh) * comp
    assert snd.stats.raw_bytes == len(flags) * raw and snd.stats.steps == len(flags)
    snd.stats.reset()
    assert snd.stats.payload_bytes == 0 and snd.stats.ref_memory_bytes == raw


def test_ef_residual_and_stateless_receiver():
    snd, rcv = make_pair("ef", "topk:0.2")[0]
    x = torch.randn(SHAPE)
    _, c1 = transfer(snd, rcv, x, 0, True)
    assert torch.allclose(snd.e, x - c1) and rcv.e is None and rcv.m is None
    e1 = snd.e.clone()
    _, c2 = transfer(snd, rcv, x, 1, False)
    assert torch.allclose(snd.e, x + e1 - c2)


def test_aqsgd_payload_mixes_first_and_later_visits():
    snd, rcv = make_pair("aqsgd", "quant:8")[0]
    row = math.prod(SHAPE[1:]) * 4
    x = torch.randn(SHAPE)
    p0, y0 = transfer(snd, rcv, x, 0, True, torch.tensor([3, 5]))
    assert p0.numel() == 2 * row and torch.equal(y0, x)  # first visits: raw
    p1, y1 = transfer(snd, rcv, x + 0.01, 1, False, torch.tensor([5, 8]))  # 5 seen, 8 new
    assert p1.numel() == row + parse_codec("quant:8").payload_nbytes((1, *SHAPE[1:]), torch.float32)
    assert torch.equal(y1[1], x[1] + 0.01) and not torch.equal(y1[0], x[0] + 0.01)
    assert snd.store.num_samples == rcv.store.num_samples == 3


def test_aqsgd_store_grows_with_samples_clapping_memory_does_not():
    aq, fu = make_pair("aqsgd", "topk:0.1")[0], make_pair("clapping-fu", "topk:0.1")[0]
    row = math.prod(SHAPE[1:]) * 4
    sizes = []
    for t in range(8):
        ids = torch.tensor([2 * t, 2 * t + 1])  # distinct samples every step
        x = torch.randn(SHAPE)
        transfer(*aq, x, t, True, ids)
        transfer(*fu, x, t, True, ids)
        sizes.append((aq[0].stats.ref_memory_bytes, fu[0].stats.ref_memory_bytes))
    assert [a for a, _ in sizes] == [2 * row * (t + 1) for t in range(8)]
    assert {f for _, f in sizes} == {math.prod(SHAPE) * 4}
    assert aq[0].store.nbytes == 16 * row


def test_aqsgd_disk_store_matches_memory(tmp_path):
    mem = make_pair("aqsgd", "topk:0.3", slots=2)
    disk = make_pair("aqsgd", "topk:0.3", slots=2, path=tmp_path)
    for a, b in zip(run_steps(mem, 20, seed=3, pool=40), run_steps(disk, 20, seed=3, pool=40)):
        assert torch.equal(a, b)
    assert (tmp_path / "recv" / "aqsgd.bin").exists()
    assert disk[0][1].store.num_samples == mem[0][1].store.num_samples > 16  # file grew past 16 rows
    assert_same_state(*disk[0])


@pytest.mark.parametrize("method", STATEFUL)
def test_state_dict_round_trip_continues_identically(method, tmp_path):
    pairs = make_pair(method, "randk:0.25", slots=2)
    run_steps(pairs, 8, seed=4)
    saved = [(s.state_dict(), r.state_dict()) for s, r in pairs]
    stores = (pairs[0][0].store.state_dict(), pairs[0][1].store.state_dict()) if method == "aqsgd" else None
    fresh_pairs = make_pair(method, "randk:0.25", slots=2)
    for (s, r), (ss, rs) in zip(fresh_pairs, saved):
        s.load_state_dict(ss)
        r.load_state_dict(rs)
    if stores:
        fresh_pairs[0][0].store.load_state_dict(stores[0])
        fresh_pairs[0][1].store.load_state_dict(stores[1])
    for a, b in zip(run_steps(pairs, 6, seed=5, start=8), run_steps(fresh_pairs, 6, seed=5, start=8)):
        assert torch.equal(a, b)


def test_step_seed_depends_on_every_field():
    base = step_seed(0, 3, 1, "fwd", 2)
    others = [step_seed(1, 3, 1, "fwd", 2), step_seed(0, 4, 1, "fwd", 2), step_seed(0, 3, 2, "fwd", 2),
              step_seed(0, 3, 1, "bwd", 2), step_seed(0, 3, 1, "fwd", 3)]
    assert base == step_seed(0, 3, 1, "fwd", 2) and base not in others and 0 <= base < 2 ** 63


@pytest.mark.parametrize("kwargs,flag", [
    (dict(method="clap"), "--pp-compression-method"),
    (dict(method="ef", bwd_method="zip"), "--pp-bwd-compression-method"),
    (dict(method="ef", fwd_codec="topk:2"), "--pp-fwd-codec"),
    (dict(method="ef", bwd_codec="quant:3"), "--pp-bwd-codec"),
    (dict(method="none", fwd_codec="topk:0.1"), "--pp-fwd-codec"),
    (dict(method="clapping-fc", fc_init="one"), "--clapping-fc-init")])
def test_bad_settings_raise_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag) as err:
        validate_compression(**kwargs)
    assert "\n" not in str(err.value)


def test_config_flags_defaults_and_validation():
    parser = add_compression_args(argparse.ArgumentParser())
    ns = parser.parse_args(["--pp-compression-method", "aqsgd", "--pp-fwd-codec", "quant:4",
                            "--aqsgd-store-dir", "/tmp/x", "--eval-with-compression"])
    cfg = CompressionConfig.from_args(ns)
    got = (cfg.method, cfg.fwd_codec, cfg.bwd_codec, cfg.aqsgd_store_dir)
    assert got == ("aqsgd", "quant:4", "identity", "/tmp/x")
    assert cfg.effective_bwd_method == "direct" == default_bwd_method("aqsgd") and cfg.eval_with_compression
    assert CompressionConfig().method == "none" and not CompressionConfig().enabled
    with pytest.raises(ValueError, match="--pp-compression-method"):
        CompressionConfig(method="bogus")
    with pytest.raises(ValueError, match="AqsgdStore"):
        Channel("aqsgd", "topk:0.1", SHAPE, torch.float32, "cpu", boundary=0, direction="fwd", slot=0)
    snd = make_pair("ef21", "topk:0.1")[0][0]
    with pytest.raises(ValueError, match="expects"):
        snd.send(torch.randn(3, 3), step=0, fresh=True)


@pytest.mark.parametrize("fc_init", ["zero", "previous"])
def test_clapping_fc_reference_on_a_fresh_batch(fc_init):
    snd, rcv = make_pair("clapping-fc", "topk:0.5", fc_init=fc_init)[0]
    codec = parse_codec("topk:0.5")
    x = torch.randn(SHAPE)
    for t in range(3):
        transfer(snd, rcv, x, t, t == 0)
    m0 = rcv.m.clone()
    payload, x_hat = transfer(snd, rcv, x + 1, 3, True)
    c = codec.decode(payload, SHAPE, torch.float32, step_seed(7, 3, 1, "fwd", 0))
    assert torch.equal(x_hat, c if fc_init == "zero" else m0 + c)
    assert_same_state(snd, rcv)
