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


# --- issue 23: real faults ---------------------------------------------------------------------
def _mount_tmpfs(path, *options) -> bool:
    """Mount a tmpfs at path (root only); False where that is not possible."""
    if os.geteuid() != 0:
        return False
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_during_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """A 600 kB tmpfs holds one checkpoint of the tiny model (~370 kB) but not two: torch.save's
    real ENOSPC arrives as RuntimeError ('unexpected pos ...')."""
    from megaclap.checkpoint import format as fmt
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=600k"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        ckpt = str(disk / "ckpt")
        argv = tiny_args(layers=2, extra=["--train-iters", "4", "--save-interval", "1", "--save", ckpt,
                                          "--log-interval", "100", "--eval-iters", "0"])
        assert main(argv) == 2
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "usually a full disk" in lines[0] and "MiB free there" in lines[0], lines
        assert fmt.read_tracker(ckpt) == 1
        fmt.load_file(fmt.shard_path(ckpt, 1, 0, 0, 1))  # the last good checkpoint still loads
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazy: even if a file stayed open


@pytest.mark.parametrize("flag", ["--save", "--data-cache-path", "--tensorboard-dir"])
def test_output_directories_are_checked_at_start_up(tmp_path, capsys, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = tiny_args(layers=2, extra=["--train-iters", "2", "--eval-iters", "0", flag, str(blocker / "sub")])
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = _error_lines(out.err)
    assert len(lines) == 1 and f"{flag} {blocker / 'sub'} is not a writable directory" in lines[0], lines
    assert "iteration" not in out.out  # refused before the first step


def test_a_read_only_save_directory_is_refused_at_start_up(tmp_path, capsys):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "size=64k", "ro"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        assert main(tiny_args(layers=2, extra=["--train-iters", "2", "--save", str(ro / "ckpt")])) == 2
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "Read-only file system" in lines[0] and "--save" in lines[0], lines
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_gloo_peer_failure_is_a_known_error():
    from megaclap.errors import peer_failure
    from megaclap.parallel.p2p import PeerTimeout
    closed = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                          "peer [127.0.0.1]:61575. This is typically caused by a remote worker crashing.")
    known = peer_failure(closed)
    assert isinstance(known, UserError) and "died or stopped answering (Connection closed by peer" in str(known)
    assert "--distributed-timeout-minutes" in str(known)
    assert peer_failure(RuntimeError("some bug")) is None and peer_failure(ValueError("Timed out waiting")) is None
    assert issubclass(PeerTimeout, UserError)
