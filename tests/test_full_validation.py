"""--full-validation (fixed validation tokens) and --eval-interval-schedule."""
import pytest
import torch

from megaclap.config import ConfigError, TrainConfig
from tests.dist import run_ranks
from tests.test_gpt_dataset import write_corpus
from tests.train_utils import make_trainer, tiny_args


def _valid_tokens(trainer) -> list:
    return [b.tokens.clone() for b in trainer.data.valid.eval_batches(trainer.cfg.train.eval_iters)]


def test_two_evaluations_read_identical_tokens_and_give_identical_loss():
    """Same model: same tokens, same loss, bit for bit. After a training step the tokens are still
    the same but the loss is not. Without the flag an evaluation reads new batches (so the
    equalities above are not an accident of the mock data)."""
    tr = make_trainer(0, 1, tiny_args(extra=["--full-validation", "--eval-iters", "3"]))
    first, loss1 = _valid_tokens(tr), tr.evaluate()
    second, loss2 = _valid_tokens(tr), tr.evaluate()
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert loss1 == loss2
    tr.train_step(tr.data.train.next_batch())
    assert all(torch.equal(a, b) for a, b in zip(first, _valid_tokens(tr)))
    assert tr.evaluate() != loss1
    plain = make_trainer(0, 1, tiny_args(extra=["--eval-iters", "3"]))
    assert not torch.equal(_valid_tokens(plain)[0], _valid_tokens(plain)[0])
    assert plain.evaluate() != plain.evaluate()


def test_full_validation_reads_the_whole_split_in_file_order_for_every_seed(tmp_path):
    """Real data: every sample of the valid split once (whole global batches), the same tokens
    whatever --seed (a seeded shuffle of the split would give each seed other tokens)."""
    prefix, _ = write_corpus(tmp_path / "c", 400, vocab=96)
    data = ["--data-path", prefix, "--split", "70,30,0"]
    toks = {}
    for seed in ("3", "4"):
        argv = [a for a in tiny_args(extra=data + ["--full-validation"]) if a != "--mock-data"]
        argv[argv.index("--seed") + 1] = seed
        tr = make_trainer(0, 1, argv)
        toks[seed] = torch.cat(_valid_tokens(tr))
        n = len(tr.data.valid.dataset)
        assert len(toks[seed]) == n // 8 * 8 and n >= 16
        assert torch.equal(toks[seed][0], torch.from_numpy(tr.data.valid.dataset.get_batch([0])[0]))
    assert torch.equal(toks["3"], toks["4"])


def _pp2_worker(rank, world, argv):
    tr = make_trainer(rank, world, argv)
    losses = [tr.evaluate() for _ in range(2)]
    tr.train_step(tr.data.train.next_batch())
    return losses + [tr.evaluate()]


def test_full_validation_at_pp2_matches_pp1():
    """Middle and last stages walk the same batches: the pp=2 loss equals the pp=1 loss."""
    argv = tiny_args(extra=["--full-validation", "--eval-iters", "2"])
    ref = _pp2_worker(0, 1, argv)
    out = run_ranks(_pp2_worker, 2, argv + ["--pipeline-model-parallel-size", "2"])
    assert out[1][0] == out[1][1]
    assert out[1] == pytest.approx(ref, rel=1e-5)


def test_eval_interval_schedule():
    t = TrainConfig(eval_interval=7, eval_interval_schedule=["0:100", "450:25"])
    due = [i for i in range(1, 560) if t.eval_due(i)]
    assert due == [100, 200, 300, 400, 450, 475, 500, 525, 550]
    assert [i for i in range(1, 30) if TrainConfig(eval_interval=7).eval_due(i)] == [7, 14, 21, 28]
    for bad in (["450:25", "0:100"], ["0-100"], ["0:0"]):
        with pytest.raises(ConfigError, match="--eval-interval-schedule"):
            make_trainer(0, 1, tiny_args(extra=["--eval-interval-schedule", *bad]))



def _steps_then_evaluate(argv, steps: int, load: bool = False, save: bool = False) -> float:
    from megaclap.training.checkpointing import Checkpointer
    tr = make_trainer(0, 1, argv)
    if load:
        Checkpointer(tr.cfg, tr.ps, print_fn=lambda s: None).load(tr)
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    if save:
        Checkpointer(tr.cfg, tr.ps, print_fn=lambda s: None).save(tr)
    return tr.evaluate()


def test_full_validation_saves_and_resumes(tmp_path):
    """Its source has no cursor: a checkpoint stores None for it and a resume (with or without the
    flag) evaluates as never stopping. Catches: a save that asks it for a cursor (AttributeError),
    or a resume that feeds None to a sampled validation source."""
    ckpt = str(tmp_path / "ckpt")
    full = tiny_args(extra=["--full-validation", "--eval-iters", "2"])
    io = ["--save", ckpt, "--load", ckpt]
    straight = _steps_then_evaluate(full, 2)
    _steps_then_evaluate(full + io, 1, save=True)
    assert _steps_then_evaluate(full + io, 1, load=True) == straight
    plain = [a for a in full if a != "--full-validation"]
    _steps_then_evaluate(plain + io, 0, load=True)  # a sampled validation source starts afresh
