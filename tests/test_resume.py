"""Resuming under changed flags: the LR schedule is checked as Megatron does, and another
data-parallel size resumes from the global data position."""
from __future__ import annotations

import os

import pytest
import torch

from megaclap.config import ConfigError, parse_args
from megaclap.config.megatron import lr_horizons
from megaclap.training.checkpointing import CheckpointError, Checkpointer
from megaclap.training.optimizer import LRScheduler
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

SCHEDULE = ["--lr-decay-style", "linear", "--lr-warmup-iters", "1"]


def _save_after(tmp_path, steps, extra=()):
    ckpt = str(tmp_path / "ckpt")
    tr = make_trainer(0, 1, tiny_args(layers=2, extra=SCHEDULE + ["--train-iters", "6", "--save", ckpt, *extra]))
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    Checkpointer(tr.cfg, tr.ps).save(tr)
    return ckpt


def _resumed(ckpt, *flags):
    tr = make_trainer(0, 1, tiny_args(layers=2, extra=SCHEDULE + ["--load", ckpt, *flags]))
    Checkpointer(tr.cfg, tr.ps, print_fn=lambda s: None).load(tr)
    return tr


def _lr_at(step, train_iters):
    cfg = parse_args(tiny_args(layers=2, extra=SCHEDULE + ["--train-iters", str(train_iters)])).validate(1)
    sched = LRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg.optim, *lr_horizons(cfg))
    sched.load_state_dict({"num_steps": step * cfg.train.global_batch_size})  # the scheduler counts samples
    return sched.get_lr()


def test_changed_train_iters_is_refused_or_resolved_by_the_megatron_flags(tmp_path):
    ckpt = _save_after(tmp_path, 3)
    with pytest.raises(CheckpointError, match=r"--lr-decay-iters.* 96 \(checkpoint: 48\).*--override-opt_param-scheduler"):
        _resumed(ckpt, "--train-iters", "12")
    assert _resumed(ckpt, "--train-iters", "6").optimizer.param_groups[0]["lr"] == _lr_at(3, 6)
    assert _lr_at(3, 6) != _lr_at(3, 12)
    override = _resumed(ckpt, "--train-iters", "12", "--override-opt_param-scheduler")
    assert override.scheduler.num_steps == 3 * override.cfg.train.global_batch_size and override.optimizer.param_groups[0]["lr"] == _lr_at(3, 12)
    keep = _resumed(ckpt, "--train-iters", "12", "--use-checkpoint-opt_param-scheduler")
    assert keep.optimizer.param_groups[0]["lr"] == _lr_at(3, 6)
    keep.scheduler.step(keep.cfg.train.global_batch_size)
    assert keep.optimizer.param_groups[0]["lr"] == _lr_at(4, 6)  # the checkpoint's decay horizon
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_args(tiny_args(extra=["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"]))


def _save_dp(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    Checkpointer(tr.cfg, tr.ps).save(tr)


def _load_dp(rank, world, argv):
    tr = make_trainer(rank, world, argv)
    lines = []
    Checkpointer(tr.cfg, tr.ps, print_fn=lines.append).load(tr)
    out = tr.train_step(tr.data.train.next_batch())
    return {"iteration": tr.iteration, "lines": lines, "ids": tr.data.train._last.sample_ids,
            "loss": out["loss"], "last": tr.ps.is_last_stage}


def test_resume_with_another_dp_size_continues_the_global_data_position(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    base = tiny_args(layers=2, gbs=4, mbs=1, extra=["--pipeline-model-parallel-size", "2",
                                                    "--pp-compression-method", "ef21", "--pp-fwd-codec", "topk:0.5"])
    run_ranks(_save_dp, 2, base + ["--save", ckpt], 2)                   # pp2 x dp1
    out = run_ranks(_load_dp, 4, base + ["--load", ckpt])                # pp2 x dp2: ranks 0, 1 are stage 0
    straight = make_trainer(0, 1, tiny_args(layers=2, gbs=4, mbs=1))     # the same global order at dp1
    for _ in range(3):
        batch = straight.data.train.next_batch()
    assert all(r["iteration"] == 3 for r in out)
    # each dp rank continues at its half of global batch 3 (dp rank 1 has no dp_rank_001.pt)
    assert torch.equal(torch.cat([out[0]["ids"], out[1]["ids"]]), batch.sample_ids)
    said = [line for r in out for line in r["lines"] if "data-parallel size changed" in line]
    assert len(said) == 1 and "from 1 to 2" in said[0] and "Channel references reset" in said[0]
    assert torch.isfinite(torch.tensor(out[2]["loss"]))


def test_missing_replica_file_at_the_same_dp_size_is_an_error(tmp_path):
    ckpt = _save_after(tmp_path, 1)
    os.remove(os.path.join(ckpt, "iter_0000001", "mp_rank_00", "dp_rank_000.pt"))
    with pytest.raises(CheckpointError, match=r"dp_rank_000\.pt is missing"):
        _resumed(ckpt, "--train-iters", "6")
