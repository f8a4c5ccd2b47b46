"""Channel updates belong to the step: a skipped (fp16 overflow) step rolls every reference,
residual and AQ-SGD store row back on both ends, so a non-finite payload poisons nothing."""
import hashlib

import pytest
import torch

from tests.dist import run_ranks
from tests.test_channels import SHAPE, bits, make_pair, transfer
from tests.train_utils import make_trainer, tiny_args

STATEFUL = ["ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu"]


def _state(ch):
    """Every tensor of an endpoint's state, cloned (m, e and the store rows by id)."""
    out = {"m": ch.m, "e": ch.e}
    if ch.store is not None:
        ids = ch.store.state_dict()["ids"]
        out["ids"] = ids
        out["rows"] = ch.store.read(ch.store.find(ids)) if len(ids) else None
    return {k: None if v is None else v.clone() for k, v in out.items()}


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert torch.equal(bits(a[k]), bits(b[k])), k


def _end_step(pair, skipped):
    for ch in pair:
        ch.rollback() if skipped else ch.commit()
        if ch.store is not None:
            ch.store.rollback() if skipped else ch.store.commit()


@pytest.mark.parametrize("disk", [False, True])
@pytest.mark.parametrize("method", STATEFUL)
def test_rollback_restores_state_exactly_and_training_goes_on(method, disk, tmp_path):
    """Catches: no rollback (the inf stays in m / e / the store forever), a rollback of one end
    only, a rollback that forgets rows inserted this step, or one that touches earlier steps."""
    pair = make_pair(method, "topk:0.3", path=tmp_path / "a" if disk else None)[0]
    clean = make_pair(method, "topk:0.3", path=tmp_path / "b" if disk else None)[0]
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(SHAPE, generator=gen) for _ in range(6)]
    ids = [torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 3]), torch.tensor([0, 4])]
    for t in range(2):
        for p in (pair, clean):
            transfer(*p, xs[t], t, t == 0, ids[t])
            _end_step(p, False)
    before = [_state(ch) for ch in pair]
    bad = xs[2].clone()
    bad[0, 0, 0] = float("inf")
    transfer(*pair, bad, 2, False, ids[2])  # the overflowing step (sample 3 is new to aqsgd)
    assert any(not torch.isfinite(v).all() for ch in pair for v in _state(ch).values()
               if v is not None and v.is_floating_point())  # the state is poisoned now
    _end_step(pair, True)
    for ch, st in zip(pair, before):
        _assert_state_equal(_state(ch), st)
    for t in range(3, 6):  # the run goes on exactly as one that never saw the bad step
        a = transfer(*pair, xs[t], t, False, ids[t % 4])[1]
        b = transfer(*clean, xs[t], t, False, ids[t % 4])[1]
        _end_step(pair, False)
        _end_step(clean, False)
        assert torch.isfinite(a).all() and torch.equal(bits(a), bits(b))
    for x, y in zip(pair, clean):
        _assert_state_equal(_state(x), _state(y))


def _digest(t) -> str:
    return "none" if t is None else hashlib.sha1(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _fp16_worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    outs = [tr.train_step(tr.data.train.next_batch()) for _ in range(steps)]
    hashes = {}
    for (b, d, s), ch in tr.p2p.channels.items():
        role = "send" if (d == "fwd") == (tr.ps.pp_rank == b) else "recv"
        hashes[(b, d, s, role)] = _digest(ch.m)
    return {"skipped": [o["skipped"] for o in outs], "loss": [o["loss"] for o in outs],
            "last": tr.ps.is_last_stage, "hashes": hashes, "scale": tr.scaler.scale}


def _fp16_args(method, bwd):
    return tiny_args(layers=2, gbs=4, extra=[
        "--pipeline-model-parallel-size", "2", "--fp16", "--initial-loss-scale", str(2.0 ** 22),
        "--pp-compression-method", method, "--pp-bwd-compression-method", bwd,
        "--pp-fwd-codec", "identity" if method == "none" else "topk:0.5",
        "--pp-bwd-codec", "identity" if bwd == "none" else "topk:0.5"])


def test_fp16_pp2_ef21_and_ef_recover_like_none():
    """fp16 at PP=2: early steps overflow and are skipped, then training proceeds. Before the
    rollback, an overflowing backward payload left inf/nan in ef21's m and ef's residual and
    every later step was skipped too (ef21 40 of 40). References stay identical on both ends."""
    steps = 10
    runs = {bwd: run_ranks(_fp16_worker, 2, _fp16_args("none" if bwd == "none" else "ef21", bwd), steps)
            for bwd in ("none", "ef21", "ef")}
    base = runs["none"][1]["skipped"]
    assert 0 < sum(base) < steps - 3 and not any(base[-3:])  # skips early, then steps
    for bwd, res in runs.items():
        last = [r for r in res if r["last"]][0]
        assert last["skipped"] == base, f"{bwd}: skipped {last['skipped']} vs none {base}"
        assert all(torch.isfinite(torch.tensor(last["loss"])))
        hashes = {**res[0]["hashes"], **res[1]["hashes"]}
        for (b, d, s, role), h in hashes.items():
            if role == "send":
                assert h == hashes[(b, d, s, "recv")], f"{bwd}: {b}/{d}/{s} differs between the ends"
                if bwd == "ef21":
                    assert h != "none"


def test_without_undo_nothing_is_kept_and_rollback_refuses():
    """No fp16 scaler, no skipped step: Channels and AQ-SGD stores keep no pre-step copies
    (a memory and read cost on every step otherwise), and P2P.rollback refuses."""
    from megaclap.compression.store import AqsgdStore
    from megaclap.config import CompressionConfig
    from megaclap.parallel.p2p import P2P
    from megaclap.parallel.state import ParallelState
    store = AqsgdStore((4,), torch.float32, "cpu")
    store.write(store.insert(torch.tensor([0, 1])), torch.ones(2, 4))
    store.commit()
    store.undo = False
    store.write(torch.tensor([0]), torch.zeros(1, 4))
    assert store._undo == {}
    store.undo = True
    store.write(torch.tensor([1]), torch.zeros(1, 4))
    assert list(store._undo) == [1]
    p2p = P2P(ParallelState(1, 1, 1, 0, torch.device("cpu")), (2, 4, 8), torch.float32,
              CompressionConfig(method="ef21", fwd_codec="quant:8"), undo=False)
    ch = p2p.channel(0, "fwd", 0)
    assert ch.undo is False
    ch._remember()
    assert ch._saved is None
    with pytest.raises(RuntimeError, match="undo=True"):
        p2p.rollback()
