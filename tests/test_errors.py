"""Known errors after start-up end the job with one line naming the problem and the fix, printed
once, exit code 2, the traceback in a file (megaclap.errors, megaclap.training.pretrain.main)."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from megaclap.data.indexed_dataset import HEADER_BYTES, IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
from megaclap.errors import UserError, report
from megaclap.training.pretrain import main
from tests.train_utils import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(tmp_path, negative: bool) -> str:
    prefix = str(tmp_path / "corpus")
    b = IndexedDatasetBuilder(prefix + ".bin", np.uint16)
    rng = np.random.default_rng(0)
    for _ in range(64):
        b.add_document(rng.integers(0, 96, 40))
    b.finalize(prefix + ".idx")
    if negative:  # sequence 3's length becomes -40: a corrupt index
        with open(prefix + ".idx", "r+b") as f:
            f.seek(HEADER_BYTES + 4 * 3)
            f.write(np.int32(-40).tobytes())
    return prefix


def _data_args(prefix, extra=()):
    return [a for a in tiny_args(layers=2, extra=["--data-path", prefix, "--split", "90,10,0", *extra])
            if a != "--mock-data"]


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("megaclap: error:")]


def test_negative_sequence_length_is_refused_by_the_reader(tmp_path):
    with pytest.raises(IndexedDatasetError, match="sequence 3 has negative length -40"):
        IndexedDataset(_corpus(tmp_path, negative=True))


def test_corrupt_idx_under_torchrun_prints_one_line_and_exits_2(tmp_path):
    prefix = _corpus(tmp_path, negative=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "127.0.0.1:0", os.path.join(ROOT, "examples/pretrain_gpt/pretrain_gpt.py")]
    argv = _data_args(prefix, ["--pipeline-model-parallel-size", "2", "--distributed-timeout-minutes", "1"])
    out = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=240, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    text = out.stdout + out.stderr
    lines = _error_lines(text)
    assert out.returncode != 0 and len(lines) == 1, text[-4000:]   # both stages read the corrupt .idx
    assert "corpus.idx: sequence 3 has negative length" in lines[0] and "preprocess_data.py" in lines[0]
    assert re.search(r"exitcode\s*:\s*2", text), text[-4000:]      # the workers' code, in torchrun's summary
    assert "Traceback" not in out.stdout and "IndexedDatasetError" not in text.replace(lines[0], "")
    path = re.search(r"traceback in (\S+);", lines[0]).group(1)
    assert "IndexedDatasetError" in open(path).read()


def test_disk_full_on_save_is_one_line_and_keeps_the_tracker(tmp_path, monkeypatch, capsys):
    from megaclap.checkpoint import format as fmt
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(layers=2, extra=["--train-iters", "2", "--save-interval", "1", "--save", ckpt,
                                      "--log-interval", "100", "--eval-iters", "0"])
    real = fmt.torch.save

    def full_disk(obj, path, *a, **k):
        if "iter_0000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *a, **k)
    monkeypatch.setattr(fmt.torch, "save", full_disk)
    assert main(argv + ["--verbose-errors"]) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--save" in lines[0], err
    assert "Traceback" in err  # --verbose-errors
    assert fmt.read_tracker(ckpt) == 1


def test_corrupt_checkpoint_shard_is_one_line(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(layers=2, extra=["--train-iters", "1", "--save", ckpt, "--log-interval", "100",
                                      "--eval-iters", "0"])
    assert main(argv) == 0
    shard = os.path.join(ckpt, "iter_0000001", "mp_rank_00", "model_optim_rng.pt")
    with open(shard, "r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    assert main(argv[:-2] + ["--load", ckpt, "--train-iters", "2"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "model_optim_rng.pt: cannot read" in err and "Traceback" not in err


def test_missing_tokenizer_file_is_one_line(tmp_path, capsys):
    argv = [a for a in tiny_args() if a != "--mock-data"]
    argv = argv[:argv.index("--vocab-size")] + argv[argv.index("--vocab-size") + 2:]
    assert main(argv + ["--data-path", str(tmp_path / "x"), "--tokenizer-type", "SentencePieceTokenizer",
                        "--tokenizer-model", str(tmp_path / "none.model")]) == 2
    err = capsys.readouterr().err
    assert err.count("megaclap: error:") == 1 and "--tokenizer-model" in err and "Traceback" not in err


def test_unknown_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        report(ZeroDivisionError("a bug"))
    assert report(UserError("known")) == 2
