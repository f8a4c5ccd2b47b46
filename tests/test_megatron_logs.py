"""The log lines a Megatron-LM user's parsers read: microsecond timestamps, the run's first
iteration logged without closing the interval, no `grad norm` field after a skipped fp16 step,
and the evaluations after training `on validation set` / `on test set` between dash rules one
longer than the line (Megatron's training_log and evaluate_and_print_results)."""
from __future__ import annotations

import re

import torch

from megaclap.config import parse_args
from megaclap.parallel.state import ParallelState
from megaclap.training.pretrain import run
from tests.train_utils import tiny_args

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\]"
LOSS = re.compile(r" iteration +(\d+)/ +\d+ \|.* lm loss: (\S+) \|")


def _run(extra):
    cfg = parse_args(tiny_args(layers=2, extra=extra)).validate(1)
    lines = []
    trainer = run(cfg, ParallelState(1, 1, 1, 0, torch.device("cpu")), print_fn=lines.append)
    return trainer, lines


def test_first_iteration_and_timestamps_and_final_evaluations():
    trainer, lines = _run(["--train-iters", "5", "--log-interval", "3", "--eval-interval", "100",
                           "--split", "90,5,5"])
    train = [line for line in lines if LOSS.search(line)]
    assert all(re.match(" " + STAMP + " iteration", line) for line in train), train
    logged = {int(LOSS.search(line).group(1)): float(LOSS.search(line).group(2)) for line in train}
    assert sorted(logged) == [1, 3, 5]                  # the first iteration, then every --log-interval
    assert [it for it, _ in trainer.history] == [1, 2, 3, 4, 5]   # each step once in the history
    loss = dict(trainer.history)
    assert abs(logged[1] - loss[1]) < 1e-6 * loss[1]     # iteration 1 alone
    assert abs(logged[3] - (loss[1] + loss[2] + loss[3]) / 3) < 1e-6 * loss[1]   # 1..3: not reset at 1
    assert abs(logged[5] - (loss[4] + loss[5]) / 2) < 1e-6 * loss[1]
    for split in ("validation set", "test set"):
        i = next(i for i, line in enumerate(lines) if f" validation loss at iteration 5 on {split} | " in line)
        assert lines[i - 1] == lines[i + 1] == "-" * (len(lines[i]) + 1)
        assert re.fullmatch(r" validation loss at iteration 5 on .* set \| lm loss value: \S+ \| lm loss PPL: \S+ \| ",
                            lines[i])
    assert not any("test loss" in line for line in lines)


def test_skipped_fp16_step_has_no_grad_norm_field():
    trainer, lines = _run(["--train-iters", "2", "--log-interval", "1", "--fp16", "--initial-loss-scale",
                           str(2.0 ** 40), "--hysteresis", "1"])
    train = [line for line in lines if LOSS.search(line)]
    assert trainer.skipped >= 1 and len(train) == 2
    first = train[0]   # 2^40 overflows fp16 at the first step
    assert "number of skipped iterations:   1 |" in first and "grad norm" not in first
    assert re.search(r"loss scale: \S+ \| number of skipped iterations", first)
