"""Training loop: data parallelism, initialisation, convergence, log format, precision."""
import re

import pytest
import torch

from tests.dist import run_ranks
from tests.train_utils import tiny_args, train_worker


def test_dp2_half_batches_equals_dp1_full_batch():
    ref = train_worker(0, 1, tiny_args(), 3)
    for res in run_ranks(train_worker, 2, tiny_args(), 3):
        torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-5)
        for name, value in res["params"].items():
            torch.testing.assert_close(value, ref["params"][name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_cpu_initialization_first_loss_same_at_tp1_tp2(flavour):
    ref = train_worker(0, 1, tiny_args(flavour), 1)
    out = run_ranks(train_worker, 2, tiny_args(flavour, extra=["--tensor-model-parallel-size", "2"]), 1)
    assert out[0]["losses"][0] == pytest.approx(ref["losses"][0], rel=1e-6)


def test_tp2_dp2_loss_decreases_over_30_steps():
    argv = tiny_args(extra=["--tensor-model-parallel-size", "2", "--lr", "3e-3"])
    losses = run_ranks(train_worker, 4, argv, 30)[0]["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.25, losses


def test_log_lines_and_tensorboard(tmp_path, capsys):
    from megaclap.training.pretrain import main
    tb = tmp_path / "tb"
    argv = tiny_args(extra=["--train-iters", "4", "--log-interval", "2", "--eval-interval", "2",
                            "--tensorboard-dir", str(tb)])
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = re.compile(r" iteration +4/ +4 \| consumed samples: +32 \| elapsed time per iteration \(ms\): [\d.]+ \|"
                      r" throughput per GPU \(TFLOP/s/GPU\): [\d.]+ \| learning rate: \d\.\d{6}E[+-]\d+ \|"
                      r" global batch size: +8 \| lm loss: \d\.\d{6}E[+-]\d+ \| loss scale: 1\.0 \|"
                      r" grad norm: [\d.]+ \| number of skipped iterations: +0 \| number of nan iterations: +0 \|"
                      r" tokens per second: [\d.]+ \|")
    assert line.search(out), out
    assert re.search(r"validation loss at iteration 2 \| lm loss value: \S+ \| lm loss PPL: \S+ \|", out)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("lm loss", "learning-rate", "grad-norm", "loss-scale", "iteration-time", "throughput",
                "batch-size", "lm loss validation", "lm loss validation ppl"):
        assert key in tags and f"{key} vs samples" in tags, key


def test_bf16_autocast_trains_on_cpu():
    res = train_worker(0, 1, tiny_args(extra=["--bf16", "--lr", "3e-3"]), 12)
    assert all(torch.isfinite(torch.tensor(res["losses"])))
    assert res["losses"][-1] < res["losses"][0]


def test_fp16_overflow_skips_the_step_and_leaves_the_optimizer_untouched():
    from tests.train_utils import make_trainer
    tr = make_trainer(0, 1, tiny_args(layers=2, extra=["--fp16", "--initial-loss-scale", str(2.0 ** 40), "--hysteresis", "1"]))
    before = {n: p.detach().clone() for n, p in tr.stage.named_parameters()}
    lr = tr.optimizer.param_groups[0]["lr"]
    out = tr.train_step(tr.data.train.next_batch())   # loss x 2^40 overflows fp16 gradients
    assert out["skipped"] and tr.skipped == 1 and tr.scaler.scale == 2.0 ** 39
    assert all(torch.equal(p, before[n]) for n, p in tr.stage.named_parameters())
    assert not tr.optimizer.state and tr.scheduler.num_steps == 0 and tr.optimizer.param_groups[0]["lr"] == lr
    tr.scaler.scale = 2.0 ** 8
    out = tr.train_step(tr.data.train.next_batch())
    assert not out["skipped"] and tr.scheduler.num_steps == tr.cfg.train.global_batch_size and len(tr.optimizer.state) > 0
    assert any(not torch.equal(p, before[n]) for n, p in tr.stage.named_parameters())


def test_recompute_full_gives_same_gradients():
    ref = train_worker(0, 1, tiny_args(), 1)
    rec = train_worker(0, 1, tiny_args(extra=["--recompute-granularity", "full"]), 1)
    for name, (g, _) in rec["grads"].items():
        torch.testing.assert_close(g, ref["grads"][name][0], rtol=1e-6, atol=1e-6)
