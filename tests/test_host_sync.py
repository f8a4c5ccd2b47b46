"""A training step makes no host synchronisation except on log steps (issue 15).

On CPU a counting shim stands in for CUDA's sync debug mode: it counts the calls that read a
device value back to the host (.item, .tolist, .cpu, .numpy, bool/float/int of a tensor,
torch.cuda.synchronize) made from megaclap's own code (torch's CPU optimizer reads its CPU step
counters, which on CUDA live on the device).
"""
import os
import sys
from contextlib import contextmanager

import pytest
import torch

from tests.train_utils import make_trainer, tiny_args

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + "megaclap" + os.sep
_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@contextmanager
def count_host_syncs():
    calls = []

    def wrap(name, fn):
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(_PKG):
                calls.append((name, caller, sys._getframe(1).f_lineno))
            return fn(*args, **kwargs)
        return counted

    saved = {name: getattr(torch.Tensor, name) for name in _READS}
    saved_sync = torch.cuda.synchronize
    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        torch.cuda.synchronize = wrap("cuda.synchronize", saved_sync)
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.cuda.synchronize = saved_sync


def test_non_logging_step_makes_no_host_sync_and_log_step_does():
    tr = make_trainer(0, 1, tiny_args(layers=2))
    tr.train_step(tr.data.train.next_batch())  # warm-up (first-call caches)
    batch = tr.data.train.next_batch()
    with count_host_syncs() as calls:
        out = tr.train_step(batch, sync=False, measure=False)
    assert calls == [], calls
    assert isinstance(out["loss"], torch.Tensor) and isinstance(out["grad_norm"], torch.Tensor)
    with count_host_syncs() as calls:  # the shim does see the reads a log step makes
        tr.train_step(tr.data.train.next_batch())
    assert {name for name, _, _ in calls} >= {"item", "tolist"}, calls


def test_fp16_step_makes_exactly_one_host_sync():
    tr = make_trainer(0, 1, tiny_args(layers=2, extra=["--fp16", "--initial-loss-scale", "1024"]))
    tr.train_step(tr.data.train.next_batch())
    with count_host_syncs() as calls:
        tr.train_step(tr.data.train.next_batch(), sync=False, measure=False)
    assert [name for name, _, _ in calls] == ["item"], calls  # the fused overflow flag, once


def test_train_loop_history_and_log_line_match_per_step_values():
    argv = tiny_args(layers=2, extra=["--train-iters", "3", "--log-interval", "2", "--eval-interval", "100"])
    ref = make_trainer(0, 1, argv)
    expected = [ref.train_step(ref.data.train.next_batch())["loss"] for _ in range(3)]
    lines = []
    tr = make_trainer(0, 1, argv)
    tr.print = lines.append
    tr.train()
    assert tr.history == [(1, expected[0]), (2, expected[1]), (3, expected[2])]
    logged = [float(line.split("lm loss: ")[1].split(" ")[0]) for line in lines if "lm loss:" in line]
    # the first iteration alone (as Megatron), then the interval 1..2 (not reset at 1), then 3
    assert logged == pytest.approx([expected[0], (expected[0] + expected[1]) / 2, expected[2]], rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_non_logging_step_raises_no_sync_error():
    from megaclap.config import parse_args
    from megaclap.parallel.state import ParallelState
    from megaclap.training.trainer import Trainer
    cfg = parse_args(tiny_args(layers=2, extra=["--bf16"])).validate(1)
    tr = Trainer(cfg, ParallelState(1, 1, 1, 0, torch.device("cuda")), print_fn=lambda s: None)
    tr.train_step(tr.data.train.next_batch())
    batch = tr.data.train.next_batch()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.train_step(batch, sync=False, measure=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_nan_iterations_counted_on_device_and_read_lazily(monkeypatch):
    import megaclap.training.trainer as trainer_module
    tr = make_trainer(0, 1, tiny_args(layers=2))
    monkeypatch.setattr(trainer_module, "clip_grad_norm", lambda *a: torch.tensor(float("nan")))
    for _ in range(3):
        tr.train_step(tr.data.train.next_batch(), sync=False, measure=False)
    assert tr.nans == 3  # a bool accumulator would say 1
    tr.nans = 5  # checkpoint restore
    assert tr.nans == 5
