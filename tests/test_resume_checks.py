"""Resuming from a checkpoint that does not fit the run (issue 23, items 9 and 10): the saved
model arguments are compared before any tensor is loaded and the differing flag is named; a
changed --split, a --load of a file and a missing shard at the same layout are one line each; a
changed compression method starts the Channels fresh with a note."""
from __future__ import annotations

import os
import shutil

import pytest

from megaclap.training.pretrain import main
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

BASE = ["--lr-decay-iters", "20", "--log-interval", "100", "--eval-iters", "0"]


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("megaclap: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 2-iteration checkpoint of the tiny 2-layer model (4 heads, hidden 32)."""
    path = str(tmp_path_factory.mktemp("resume") / "ckpt")
    assert main(tiny_args(layers=2, extra=[*BASE, "--train-iters", "2", "--save", path])) == 0
    return path


def _resume(ckpt, *changes) -> list:
    argv = tiny_args(layers=2, extra=[*BASE, "--train-iters", "4", "--load", ckpt])
    for flag, value in zip(changes[::2], changes[1::2]):
        argv[argv.index(flag) + 1] = value
    return argv


def test_loading_4_heads_into_8_heads_names_the_flag(ckpt, capsys):
    line = _error(capsys, _resume(ckpt, "--num-attention-heads", "8"))
    assert "saved with --num-attention-heads 4 (this run: 8)" in line and "--num-query-groups" not in line, line


def test_another_hidden_size_names_the_flag_not_a_shape_error(ckpt, capsys):
    line = _error(capsys, _resume(ckpt, "--hidden-size", "64"))
    assert "saved with --hidden-size 32 (this run: 64): its weights do not fit" in line, line


def test_a_load_of_a_file_is_refused(ckpt, capsys):
    shard = os.path.join(ckpt, "iter_0000002", "mp_rank_00", "model_optim_rng.pt")
    line = _error(capsys, _resume(shard))
    assert f"--load {shard} is a file" in line, line


def test_a_missing_shard_at_the_same_layout_is_called_missing(ckpt, tmp_path, capsys):
    copy = str(tmp_path / "ckpt")
    shutil.copytree(ckpt, copy)
    os.remove(os.path.join(copy, "iter_0000002", "mp_rank_00", "model_optim_rng.pt"))
    line = _error(capsys, _resume(copy))
    assert "is missing: iteration 2 of" in line and "incomplete (same layout, tp=1 pp=1)" in line, line
    assert "another" not in line and "reshard" not in line, line


def test_resuming_with_another_split_is_refused_but_finetuning_is_not(tmp_path, capsys):
    from tests.test_data_checks import _corpus
    data = _corpus(tmp_path / "corpus")
    save = str(tmp_path / "ckpt")

    def argv(split, *extra):
        return [a for a in tiny_args(layers=2, extra=[*BASE, "--data-path", data, "--split", split, *extra])
                if a != "--mock-data"]
    assert main(argv("90,10,0", "--train-iters", "2", "--save", save)) == 0
    assert main(argv("9,1,0", "--train-iters", "3", "--load", save)) == 0  # the same split, written otherwise
    line = _error(capsys, argv("50,50,0", "--train-iters", "4", "--load", save))
    assert "--split 50,50,0 differs from the checkpoint's 90,10,0" in line and "--finetune" in line, line
    assert main(argv("50,50,0", "--train-iters", "2", "--load", save, "--finetune")) == 0


def _method_worker(rank, world, save):
    from megaclap.training.checkpointing import Checkpointer
    pp2 = ["--pipeline-model-parallel-size", "2", "--pp-fwd-codec", "quant:8", "--pp-bwd-codec", "quant:8",
           "--lazy-sampling-period", "2", *BASE, "--save", save]
    tr = make_trainer(rank, world, tiny_args(layers=2, extra=[*pp2, "--pp-compression-method", "ef21"]))
    for _ in range(2):
        tr.train_step(tr.data.train.next_batch())
    Checkpointer(tr.cfg, tr.ps).save(tr)
    again = make_trainer(rank, world, tiny_args(layers=2, extra=[*pp2, "--pp-compression-method", "clapping-fu",
                                                                 "--load", save]))
    notes = []
    Checkpointer(again.cfg, again.ps, print_fn=notes.append).load(again)
    loss = again.train_step(again.data.train.next_batch())["loss"]
    return {"notes": notes, "loss": loss, "iteration": again.iteration}


def test_a_changed_compression_method_on_resume_starts_the_channels_fresh(tmp_path):
    res = run_ranks(_method_worker, 2, str(tmp_path / "ckpt"))
    assert res[1]["iteration"] == 3 and res[1]["loss"] == res[1]["loss"]
    assert [n for r in res for n in r["notes"]] == [
        " note: pipeline compression changed from ef21/ef21 (forward/backward) in the checkpoint to "
        "clapping-fu/clapping-fu: Channel references and AQ-SGD stores start fresh"]
