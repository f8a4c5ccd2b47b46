"""Megatron's schedule flags: warmup fraction, sample-based horizons, batch-size ramp-up and
consumed samples across a resume that changes the global batch."""
import pytest
import torch

from megaclap.config import ConfigError, parse_args
from megaclap.config.batch_schedule import BatchSchedule, build_batch_schedule
from megaclap.config.megatron import lr_horizons
from megaclap.training.optimizer import LRScheduler
from tests.dist import run_ranks

BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "100", "--micro-batch-size", "2", "--global-batch-size", "4", "--mock-data",
        "--lr", "1e-3", "--min-lr", "1e-4"]


def lrs(argv, world=1):
    """LR after each step of a run with these flags (the trainer's scheduler and batch sizes)."""
    cfg = parse_args(BASE + argv).validate(world)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = LRScheduler(opt, cfg.optim, *lr_horizons(cfg))
    batches = build_batch_schedule(cfg.train, cfg.model.seq_length, 1)
    out, consumed = [opt.param_groups[0]["lr"]], 0
    for _ in range(cfg.train.train_iters):
        gbs = batches.at(consumed)
        consumed += gbs
        sched.step(gbs)
        out.append(opt.param_groups[0]["lr"])
    return cfg, out


def test_warmup_fraction_is_a_fraction_of_the_decay():
    cfg, lr = lrs(["--train-iters", "10", "--lr-decay-iters", "8", "--lr-warmup-fraction", "0.25",
                   "--lr-decay-style", "linear"])
    assert lr_horizons(cfg) == (8.0, 32)                      # samples: 0.25 x 8 steps x 4
    assert lr[:3] == pytest.approx([0.0, 5e-4, 1e-3])         # warmup over 2 steps
    assert lr[5] == pytest.approx(1e-4 + (1e-3 - 1e-4) * (1 - 3 / 6))
    assert lr[8:] == pytest.approx([1e-4] * 3)                # floor after --lr-decay-iters
    with pytest.raises(ConfigError, match="--lr-warmup-fraction and --lr-warmup-iters"):
        parse_args(BASE + ["--train-iters", "4", "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "1"]).validate(1)


@pytest.mark.parametrize("style", ["linear", "cosine", "inverse-square-root"])
def test_sample_schedule_equals_iteration_schedule(style):
    it_cfg, by_iter = lrs(["--train-iters", "8", "--lr-decay-iters", "6", "--lr-warmup-iters", "2",
                           "--lr-decay-style", style])
    s_cfg, by_sample = lrs(["--train-samples", "32", "--lr-decay-samples", "24", "--lr-warmup-samples", "8",
                            "--lr-decay-style", style])
    assert s_cfg.train.train_iters == it_cfg.train.train_iters == 8
    assert by_sample == pytest.approx(by_iter) and len(set(by_iter)) > 3


def test_mixing_sample_and_iteration_flags_is_an_error():
    with pytest.raises(ConfigError, match="exclusive"):
        parse_args(BASE + ["--train-iters", "4", "--train-samples", "16"]).validate(1)
    with pytest.raises(ConfigError, match="--lr-decay-samples"):
        parse_args(BASE + ["--train-samples", "16", "--lr-decay-iters", "4"]).validate(1)


def test_rampup_batch_sizes():
    s = BatchSchedule(16, 2, rampup=[4, 4, 24])       # 3 increments of 8 samples each
    sizes, consumed = [], 0
    for _ in range(7):
        sizes.append(s.at(consumed))
        consumed += sizes[-1]
    assert sizes == [4, 4, 8, 12, 16, 16, 16]
    assert s.iterations_for(100) == 4 + (100 - 28) // 16      # 4 ramp steps (28 samples), then full
    with pytest.raises(ConfigError, match="not a multiple"):
        BatchSchedule(16, 8, rampup=[4, 4, 24])
    cfg = parse_args(BASE + ["--train-samples", "40", "--rampup-batch-size", "2", "2", "8"]).validate(1)
    assert cfg.train.train_iters == 4 + (40 - 8) // 4          # four steps of 2, then steps of 4


def _train(rank, world, argv):
    from megaclap.parallel.state import ParallelState
    from megaclap.training.pretrain import run
    cfg = parse_args(argv).validate(world)
    ps = ParallelState(1, 1, world, rank, torch.device("cpu"))
    lines = []
    tr = run(cfg, ps, print_fn=lines.append)
    sizes = [int(l.split("global batch size:")[1].split("|")[0]) for l in lines if "global batch size:" in l]
    return {"consumed": tr.consumed_samples, "sizes": sizes, "lines": lines,
            "distinct": tr.data.train.distinct_samples_seen, "iteration": tr.iteration}


def test_consumed_samples_across_a_resume_that_changes_the_batch(tmp_path):
    ckpt = ["--save", str(tmp_path / "ck"), "--load", str(tmp_path / "ck"), "--log-interval", "1",
            "--eval-iters", "0", "--micro-batch-size", "1"]
    first = run_ranks(_train, 1, BASE + ckpt + ["--train-iters", "2"])[0]
    assert first["consumed"] == 8
    second = run_ranks(_train, 1, BASE + ckpt + ["--train-iters", "4", "--global-batch-size", "8",
                                                 "--override-opt_param-scheduler"])[0]  # a new horizon, as Megatron
    assert second["consumed"] == 2 * 4 + 2 * 8 == second["distinct"]     # not 4 steps x 8 = 32
    assert "consumed samples:           24" in "\n".join(second["lines"])
    saved = torch.load(tmp_path / "ck" / "iter_0000004" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert saved["consumed_samples"] == 24


def test_rampup_resume_continues_the_schedule(tmp_path):
    ramp = ["--rampup-batch-size", "1", "1", "6", "--micro-batch-size", "1", "--train-iters", "6",
            "--log-interval", "1", "--eval-iters", "0"]
    straight = run_ranks(_train, 1, BASE + ramp)[0]
    assert straight["sizes"] == [1, 1, 2, 3, 4, 4]          # +1 every 2 samples, 4 after 6
    ck = ["--save", str(tmp_path / "ck"), "--load", str(tmp_path / "ck")]
    run_ranks(_train, 1, BASE + ramp + ck + ["--exit-interval", "3"])
    resumed = run_ranks(_train, 1, BASE + ramp + ck)[0]
    assert resumed["sizes"] == straight["sizes"][3:] and resumed["consumed"] == straight["consumed"]
