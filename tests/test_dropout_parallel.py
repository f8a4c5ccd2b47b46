"""Dropout under tensor and pipeline parallelism (tp=2 x pp=2): it runs, it is active, two runs
with one seed give identical losses, and tensor-parallel ranks draw the same masks on
replicated activations (their replicated parameters stay identical)."""
import math

import torch

from megaclap.parallel.p2p import StepInfo
from megaclap.parallel.schedules import forward_backward
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

STEPS = 3


def _forward_loss(tr, batch, train_mode):
    """Loss of one batch, forward only, with dropout on (train mode) or off (eval mode)."""
    tr.stage.train(train_mode)
    with torch.no_grad():
        stats = forward_backward(tr.stage, tr.ps, tr.eval_p2p, tr._microbatches(batch), StepInfo(0, True),
                                 forward_only=True, autocast=tr.autocast)
    return float(torch.stack(stats.losses).mean()) if tr.ps.is_last_stage else None


def _worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    batch = tr.data.valid.next_batch()
    on, off = _forward_loss(tr, batch, True), _forward_loss(tr, batch, False)
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(steps)]
    replicated = {tr.stage.global_name(n): p.detach().clone() for n, p in tr.stage.named_parameters()
                  if getattr(p, "tp_partition", None) is None}
    return {"last": tr.ps.is_last_stage, "losses": losses, "on_off": (on, off), "pp": tr.ps.pp_rank,
            "replicated": replicated}


def test_dropout_under_tp_and_pp_is_seeded_active_and_consistent():
    """Catches: dropout RNG not seeded (runs differ), dropout never applied (train == eval loss),
    or different masks on tp ranks for replicated activations (replicated weights drift apart)."""
    argv = tiny_args(layers=2, gbs=4, extra=["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"])
    for flag in ("--hidden-dropout", "--attention-dropout"):
        argv[argv.index(flag) + 1] = "0.2"
    runs = [run_ranks(_worker, 4, argv, STEPS) for _ in range(2)]
    last = [[r for r in res if r["last"]][0] for res in runs]
    assert all(math.isfinite(v) for v in last[0]["losses"])
    assert last[0]["losses"] == last[1]["losses"]  # one seed: bit-identical
    on, off = last[0]["on_off"]
    assert on != off  # dropout is active in training mode only
    for pp in (0, 1):  # tp ranks of one stage hold identical replicated parameters
        a, b = [r["replicated"] for r in runs[0] if r["pp"] == pp]
        assert a and a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
