"""Non-finite values in a step (issue 23, items 3-4).

fp16: an inf in a boundary tensor is part of the step's one skip flag even where the codec drops
it (randk), so the step is skipped on every rank, both ends roll back, and no reference or
residual ever holds it. bf16/fp32: a NaN loss stops the run with one line naming the iteration
(Megatron's --check-for-nan-in-loss-and-grad), saving nothing over the last good checkpoint;
--no-check-for-nan-in-loss-and-grad skips and counts the step instead.
"""
import os

import pytest
import torch

from megaclap.compression.channels import Channel, step_seed
from megaclap.model.gpt import GPTStage
from megaclap.training.pretrain import main
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

STEPS, BAD_STEP = 8, 3  # lazy period 2: step 3 repeats step 2's batch (every sample already seen)


def _inject_dropped_inf(step, only_rank=None):
    """Channel.send wrapper: at `step`, forward slot 0 gets one inf at a position randk drops
    (on every sender, or on global rank `only_rank` alone)."""
    real = Channel.send

    def send(ch, x, *, step: int, fresh: bool, sample_ids=None, measure: bool = True):
        mine = only_rank is None or int(os.environ["RANK"]) == only_rank
        if step == BAD_STEP and ch.direction == "fwd" and ch.slot == 0 and mine:
            seed = step_seed(ch.seed, step, ch.boundary, ch.direction, ch.slot)
            kept = ch.codec.indices(x.numel(), seed, x.device)
            dropped = [i for i in range(x.numel()) if i not in set(kept.tolist())][0]
            x = x.clone()
            x.view(-1)[dropped] = float("inf")
        return real(ch, x, step=step, fresh=fresh, sample_ids=sample_ids, measure=measure)
    return send


def _state_tensors(tr):
    """(name, tensor) of every reference, residual and AQ-SGD row this rank holds."""
    out = []
    for key, ch in tr.p2p.channels.items():
        out += [(f"{key}.m", ch.m), (f"{key}.e", ch.e)]
    for key, st in tr.p2p.stores.items():
        ids = st.state_dict()["ids"]
        out.append((f"{key}.rows", st.read(st.find(ids)) if len(ids) else None))
    return [(k, v) for k, v in out if v is not None]


def _fp16_worker(rank, world, argv, steps, only_rank=None):
    Channel.send = _inject_dropped_inf(BAD_STEP, only_rank)
    tr = make_trainer(rank, world, argv)
    outs = [tr.train_step(tr.data.train.next_batch()) for _ in range(steps)]
    refs = {}
    for (b, d, s), ch in tr.p2p.channels.items():
        role = "send" if (d == "fwd") == (tr.ps.pp_rank == b) else "recv"
        refs[(b, d, s, role)] = None if ch.m is None else ch.m.clone()
    return {"skipped": [o["skipped"] for o in outs], "loss": [o["loss"] for o in outs],
            "last": tr.ps.is_last_stage, "refs": refs,
            "finite": {k: bool(torch.isfinite(v).all()) for k, v in _state_tensors(tr)}}


@pytest.mark.parametrize("method", ["ef", "ef21", "clapping-fu", "clapping-fc", "aqsgd"])
def test_fp16_inf_at_a_boundary_is_skipped_and_never_kept(method):
    """Catches: a Channel's non-finite input left out of the skip flag (randk drops the inf, the
    step commits: ef's residual keeps it and every later step that selects it is skipped, for
    ever; the others silently train on an overflowed step), the flag decided differently on the
    two ends, or a non-finite reference / residual / AQ-SGD row committed."""
    bwd = "direct" if method == "aqsgd" else method
    argv = tiny_args(layers=2, gbs=4, extra=[
        "--pipeline-model-parallel-size", "2", "--fp16", "--initial-loss-scale", "1024",
        "--pp-compression-method", method, "--pp-bwd-compression-method", bwd,
        "--pp-fwd-codec", "randk:0.25", "--pp-bwd-codec", "quant:8", "--lazy-sampling-period", "2",
        "--train-iters", str(STEPS)])
    res = run_ranks(_fp16_worker, 2, argv, STEPS)
    expected = [step == BAD_STEP for step in range(STEPS)]
    for r in res:
        assert r["skipped"] == expected, f"{method}: skipped {r['skipped']}"
        assert r["finite"] and all(r["finite"].values()), f"{method}: non-finite state {r['finite']}"
    last = [r for r in res if r["last"]][0]
    assert all(torch.isfinite(torch.tensor(last["loss"])))
    refs = {**res[0]["refs"], **res[1]["refs"]}
    for (b, d, s, role), m in refs.items():
        if role == "send":
            other = refs[(b, d, s, "recv")]
            assert (m is None) == (other is None) and (m is None or torch.equal(m, other)), (b, d, s)


def test_fp16_inf_on_one_data_parallel_replica_skips_the_step_everywhere():
    """dp=2 x pp=2, the inf on dp rank 0's sender only. Catches: the Channel flag reduced over the
    model-parallel group alone (dp rank 1 would step while dp rank 0 skips: replicas diverge)."""
    argv = tiny_args(layers=2, gbs=8, extra=[
        "--pipeline-model-parallel-size", "2", "--fp16", "--initial-loss-scale", "1024",
        "--pp-compression-method", "ef", "--pp-fwd-codec", "randk:0.25", "--pp-bwd-codec", "quant:8",
        "--train-iters", str(STEPS)])
    res = run_ranks(_fp16_worker, 4, argv, STEPS, 0)
    for r in res:
        assert r["skipped"] == [step == BAD_STEP for step in range(STEPS)], r["skipped"]
        assert all(r["finite"].values())


def _nan_loss_at(monkeypatch, bad_step: int, microbatches: int):
    """Make the training loss NaN at optimizer step `bad_step` (0-based)."""
    real, calls = GPTStage.forward, {"n": 0}

    def forward(self, x, labels=None, *args, **kwargs):
        out = real(self, x, labels, *args, **kwargs)
        if self.training and labels is not None:
            calls["n"] += 1
            if (calls["n"] - 1) // microbatches == bad_step:
                out = out * float("nan")
        return out
    monkeypatch.setattr(GPTStage, "forward", forward)


def test_nan_loss_under_bf16_stops_with_one_line_and_saves_nothing_after_it(tmp_path, monkeypatch, capsys):
    """Catches: a NaN loss only counted while the optimizer steps on (today's behaviour: the run
    ends with exit 0 and saves NaN weights), or a save between the bad step and the stop."""
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(layers=2, extra=["--bf16", "--train-iters", "6", "--save-interval", "2", "--save", ckpt,
                                      "--log-interval", "100", "--eval-iters", "0"])
    _nan_loss_at(monkeypatch, bad_step=2, microbatches=4)  # iteration 3 in the log's 1-based count
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("megaclap: error:")]
    assert len(lines) == 1, err
    assert "iteration 3:" in lines[0] and "--no-check-for-nan-in-loss-and-grad" in lines[0]
    assert open(os.path.join(ckpt, "latest_checkpointed_iteration.txt")).read().strip() == "2"
    assert sorted(n for n in os.listdir(ckpt) if n.startswith("iter_")) == ["iter_0000002"]


def test_no_check_flag_skips_and_counts_the_nan_step(monkeypatch):
    """Catches: the flag ignored (the run stops), or the bad step applied to the weights."""
    argv = tiny_args(layers=2, extra=["--bf16", "--no-check-for-nan-in-loss-and-grad"])
    tr = make_trainer(0, 1, argv)
    _nan_loss_at(monkeypatch, bad_step=1, microbatches=4)
    tr.train_step(tr.data.train.next_batch(), sync=False)
    before = {n: p.detach().clone() for n, p in tr.stage.named_parameters()}
    out = tr.train_step(tr.data.train.next_batch(), sync=False)
    assert out["skipped"] and tr.skipped == 1 and tr.nans == 1
    for n, p in tr.stage.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not tr.train_step(tr.data.train.next_batch(), sync=False)["skipped"]
    tr.check_finite()  # nothing pending: a skipped step is not a reason to stop


@pytest.mark.parametrize("method,extra", [("ef", []), ("ef21", []), ("clapping-fc", ["--clapping-fc-init", "previous"])])
def test_fp16_refuses_feedback_with_unbiased_randk_at_start_up(method, extra):
    """Catches: the combination accepted (measured: ef21 with bwd randk:0.1:scale skipped 59 of 60
    steps under fp16, the loss scale at its floor). The same codec without ':scale', or with a
    method that resets its state, stays allowed."""
    from megaclap.config import parse_args
    from megaclap.config import ConfigError

    def cfg(m, codec, *more):
        argv = tiny_args(layers=2, extra=["--pipeline-model-parallel-size", "2", "--pp-compression-method", "direct",
                                          "--pp-bwd-compression-method", m, "--pp-bwd-codec", codec, *more])
        return parse_args(argv).validate(2)
    with pytest.raises(ConfigError, match=f"--pp-bwd-compression-method {method} with --pp-bwd-codec "
                                          "randk:0.1:scale cannot recover under --fp16"):
        cfg(method, "randk:0.1:scale", "--fp16", *extra)
    cfg(method, "randk:0.1", "--fp16", *extra)
    cfg(method, "randk:0.1:scale", "--bf16", *extra)
    cfg("clapping-fu", "randk:0.1:scale", "--fp16")
