"""--clapping-fresh-codec: identity is clapping-fu and the delta codec is clapping-fc (zero init),
bit for bit, in real PP=2 training with lazy sampling; a lossy fresh codec keeps both ends'
references identical and its bytes follow p * fresh + (1 - p) * delta."""

import pytest
import torch

from megaclap.compression.channels import Channel
from megaclap.compression.codecs import parse_codec
from megaclap.config import CompressionConfig
from tests.dist import run_ranks
from tests.test_compression_pipeline import _channel_hashes, _worker
from tests.train_utils import make_trainer
from tests.train_utils import tiny_args

STEPS = 20


def _hash_worker(rank, world, argv, steps):
    """Per step: (fresh flag, channel hashes); and the sender's byte counters."""
    tr = make_trainer(rank, world, argv)
    record = []
    for _ in range(steps):
        batch = tr.data.train.next_batch()
        tr.train_step(batch)
        record.append((bool(batch.fresh), _channel_hashes(tr)))
    sent = sum(ch.stats.payload_bytes for (b, d, s), ch in tr.p2p.channels.items() if d == "fwd")
    return {"record": record, "stage": tr.ps.pp_rank, "fwd_sent": sent}


def _run(method, codec, fresh=None, bwd_codec=None, what=None):
    extra = ["--pipeline-model-parallel-size", "2", "--pp-compression-method", method,
             "--pp-fwd-codec", codec, "--pp-bwd-codec", bwd_codec or codec, "--lazy-sampling-prob", "0.5"]
    if fresh:
        extra += ["--clapping-fresh-codec", fresh]
    if what == "hashes":
        return run_ranks(_hash_worker, 2, tiny_args(extra=extra), STEPS)
    return run_ranks(_worker, 2, tiny_args(extra=extra), STEPS, what)


def _assert_same_training(a_res, b_res, what):
    for a, b in zip(a_res, b_res):
        for name, value in a["params"].items():
            assert torch.equal(value, b["params"][name]), f"{what}: {name} differs"
        if a["last"]:
            assert a["loss"] == b["loss"], f"{what}: loss differs"


def test_identity_fresh_codec_is_clapping_fu_and_delta_codec_is_clapping_fc():
    """Catches: a fresh codec ignored (fu-with-quant:4 == fu), fresh steps not reset to a zero
    reference, a seed or arithmetic that differs from the methods' own paths."""
    fu = _run("clapping-fu", "quant:4")
    fc = _run("clapping-fc", "quant:4")
    _assert_same_training(fu, _run("clapping-fc", "quant:4", fresh="identity"), "fc + identity vs fu")
    _assert_same_training(fc, _run("clapping-fu", "quant:4", fresh="quant:4"), "fu + quant:4 vs fc")
    # the two references differ, so the comparisons above can fail
    assert any(not torch.equal(v, fc[0]["params"][k]) for k, v in fu[0]["params"].items())


def test_lossy_fresh_codec_keeps_references_identical_and_bytes_follow_p():
    res = _run("clapping-fu", "hquant:2", fresh="hquant:4", bwd_codec="quant:8", what="hashes")
    for step in range(STEPS):
        seen: dict = {}
        for r in res:
            for key, (role, digest) in r["record"][step][1].items():
                seen.setdefault(key, {})[role] = digest
        for key, roles in seen.items():
            assert roles.get("send") == roles.get("recv"), f"step {step} channel {key}: {roles}"
    sender = [r for r in res if r["stage"] == 0][0]
    flags, shape, m = [f for f, _ in sender["record"]], (2, 16, 32), 4
    assert 0 < sum(flags) < len(flags)
    nb = {spec: parse_codec(spec).payload_nbytes(shape, torch.float32) for spec in ("hquant:4", "hquant:2")}
    expected = sum(m * nb["hquant:4" if f else "hquant:2"] for f in flags)
    assert sender["fwd_sent"] == expected


def test_fresh_step_sends_the_fresh_codec_against_zero():
    """Unit level: after reuse steps the reference is non-zero; a fresh step must still decode
    to F(x) alone (a stale reference added back would show up here)."""
    shape = (2, 4, 16)
    snd, rcv = (Channel("clapping-fu", "quant:2", shape, torch.float32, "cpu", boundary=0, direction="fwd",
                        slot=0, fresh_codec="hquant:8") for _ in range(2))
    x0, x1 = torch.randn(shape), torch.randn(shape)
    for step, (x, fresh) in enumerate([(x0, True), (x0, False), (x1, True)]):
        out = rcv.recv(snd.send(x, step=step, fresh=fresh), step=step, fresh=fresh)
    assert float((out - x1).norm() / x1.norm()) < 0.02
    assert torch.equal(snd.m, rcv.m)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="direct", fwd_codec="quant:4", clapping_fresh_codec="quant:8"), "clapping-fu or clapping-fc"),
    (dict(method="clapping-fc", fwd_codec="quant:4", clapping_fresh_codec="quant:8",
          clapping_fc_init="previous"), "--clapping-fc-init zero"),
    (dict(method="clapping-fu", fwd_codec="quant:4", clapping_fresh_codec="bogus"), "--clapping-fresh-codec")])
def test_bad_fresh_codec_settings_name_the_flag(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompressionConfig(**kwargs)
