"""Offline resharding: tp2pp2 -> tp1pp1 -> tp1pp2 keeps the logits and Adam state, and
training resumes from the resharded checkpoint as if it had never stopped."""
from __future__ import annotations

import pytest
import torch

from megaclap.checkpoint import io
from megaclap.checkpoint.reshard import merge_optimizer
from megaclap.training.checkpointing import Checkpointer
from tests.convert_utils import ids, logits_worker, tool, whole_logits
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

LAYOUT = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]


def _train_save_continue(rank: int, world: int, argv: list, save_dir: str):
    """Two steps, save, two more steps; the last stage returns the losses after the save."""
    tr = make_trainer(rank, world, argv + ["--save", save_dir])
    for _ in range(2):
        tr.train_step(tr.data.train.next_batch())
    Checkpointer(tr.cfg, tr.ps).save(tr)
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(2)]
    return losses if tr.ps.is_last_stage else None


def reshard(src, dst, tp: int, pp: int) -> None:
    rc = tool("tools/checkpoint/reshard.py").main([
        "--load-dir", str(src), "--save-dir", str(dst), "--target-tensor-parallel-size", str(tp),
        "--target-pipeline-parallel-size", str(pp)])
    assert rc == 0


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_reshard_keeps_logits_optimizer_and_resume(flavour, tmp_path):
    argv = tiny_args(flavour, layers=4, gbs=4, mbs=2)
    results = run_ranks(_train_save_continue, 4, argv + LAYOUT, str(tmp_path / "tp2pp2"))
    continued = [r for r in results if r is not None][0]
    reshard(tmp_path / "tp2pp2", tmp_path / "tp1pp1", 1, 1)
    reshard(tmp_path / "tp1pp1", tmp_path / "tp1pp2", 1, 2)

    tokens = ids(16, vocab=96)
    ref = whole_logits(str(tmp_path / "tp2pp2"), tokens)
    for name in ("tp1pp1", "tp1pp2"):
        assert torch.equal(whole_logits(str(tmp_path / name), tokens), ref)
    piped = [o for o in run_ranks(logits_worker, 2, str(tmp_path / "tp1pp2"), 1, 2, tokens) if o is not None]
    assert (piped[0] - ref).abs().max() < 1e-5

    before, after = (merge_optimizer(io.load_checkpoint(str(tmp_path / d))) for d in ("tp2pp2", "tp1pp2"))
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        for key in before[name]:
            assert torch.equal(before[name][key], after[name][key]), (name, key)

    tr = make_trainer(0, 1, argv + ["--load", str(tmp_path / "tp1pp1")])
    Checkpointer(tr.cfg, tr.ps).load(tr)
    assert tr.iteration == 2 and tr.scheduler.num_steps == 2 * tr.cfg.train.global_batch_size   # samples
    resumed = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(2)]
    assert resumed == pytest.approx(continued, abs=1e-5)


def test_reshard_without_optimizer_and_errors(tmp_path, capsys):
    argv = tiny_args("gpt2", layers=2, gbs=2, mbs=2)
    tr = make_trainer(0, 1, argv + ["--save", str(tmp_path / "src")])
    tr.train_step(tr.data.train.next_batch())
    Checkpointer(tr.cfg, tr.ps).save(tr)
    main = tool("tools/checkpoint/reshard.py").main
    assert main(["--load-dir", str(tmp_path / "src"), "--save-dir", str(tmp_path / "dst"), "--no-optimizer",
                 "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"]) == 0
    assert "resume with --no-load-optim" in capsys.readouterr().out
    assert "optimizer" not in io.load_checkpoint(str(tmp_path / "dst")).shards[(1, 1)]
    assert main(["--load-dir", str(tmp_path / "src"), "--save-dir", str(tmp_path / "bad"),
                 "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "3"]) == 2
    assert "--num-layers" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["--load-dir", str(tmp_path / "missing"), "--save-dir", str(tmp_path / "bad"),
                 "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_tools_refuse_to_move_a_later_tracker_back(tmp_path, capsys):
    """HF conversion (iteration 0) or resharding into a directory tracked at a later iteration."""
    from megaclap.checkpoint.format import read_tracker
    from tests.convert_utils import hf_model
    hf_model("gpt2", tmp_path / "hf")
    convert = tool("tools/checkpoint/convert.py").main
    live = str(tmp_path / "live")
    hf_args = ["--model-type", "gpt2", "--loader", "hf", "--saver", "megaclap", "--load-dir", str(tmp_path / "hf")]
    assert convert(hf_args + ["--save-dir", live]) == 0
    loaded = io.load_checkpoint(live)
    io.save_checkpoint(live, loaded.full, loaded.cfg, 1, 1, iteration=100)   # a run at iteration 100
    assert convert(hf_args + ["--save-dir", live]) == 2
    err = capsys.readouterr().err
    assert "already holds iteration 100" in err and "--overwrite" in err and read_tracker(live) == 100
    main = tool("tools/checkpoint/reshard.py").main
    target = ["--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1"]
    assert main(["--load-dir", str(tmp_path / "hf_ck"), "--save-dir", live] + target) == 2  # no such dir
    assert convert(hf_args + ["--save-dir", str(tmp_path / "hf_ck")]) == 0
    assert main(["--load-dir", str(tmp_path / "hf_ck"), "--save-dir", live] + target) == 2
    assert "--overwrite" in capsys.readouterr().err and read_tracker(live) == 100
    assert main(["--load-dir", str(tmp_path / "hf_ck"), "--save-dir", live, "--overwrite"] + target) == 0
    assert read_tracker(live) == 0
    assert convert(hf_args + ["--save-dir", live]) == 0  # same iteration: a re-save, allowed
