"""Flags that trained silently on a meaningless value (issue 23, item 9) are one-line refusals
naming the flag: in training (ConfigError before any rank joins), in tools/generate.py, and
in the checkpoint tools writing over their own input."""
from __future__ import annotations

import re

import pytest

from megaclap.config import parse_args
from megaclap.config import ConfigError
from tests.convert_utils import tool
from tests.train_utils import tiny_args


@pytest.mark.parametrize("drop,flags,match", [
    (None, ["--lazy-sampling-prob", "0"], r"--lazy-sampling-prob 0.0: must be in \(0, 1\]; 0 would train on the "
                                          r"first global batch forever.*--lazy-sampling-period N with N >= --train-iters"),
    (None, ["--lr-warmup-iters", "25"], r"--lr-warmup-iters 25 is not shorter than the run \(160 samples"),
    (None, ["--lr-warmup-iters", "30", "--lr-decay-iters", "10", "--train-iters", "40"],
     r"--lr-warmup-iters 30 does not end before the LR decay horizon"),
    ("--train-iters", ["--train-samples", "64", "--lr-warmup-samples", "64", "--lr-decay-samples", "100"],
     r"--lr-warmup-samples 64 is not shorter than the run \(64 samples"),
    (None, ["--lr-warmup-fraction", "1.0"], r"--lr-warmup-fraction 1.0 is not shorter than the run"),
    (None, ["--clip-grad", "-1"], r"--clip-grad -1.0 must be >= 0 \(.*0 disables clipping\)"),
    (None, ["--weight-decay", "-0.1"], r"--weight-decay -0.1 must be >= 0"),
    (None, ["--ffn-hidden-size", "0"], r"--ffn-hidden-size 0 must be a positive integer"),
])
def test_meaningless_training_flags_are_refused(drop, flags, match):
    argv = tiny_args()
    if drop is not None:  # a flag of tiny_args and its value
        i = argv.index(drop)
        argv = argv[:i] + argv[i + 2:]
    with pytest.raises(ConfigError, match=match):
        parse_args(argv + flags).validate(1)


@pytest.mark.parametrize("flags", [["--clip-grad", "0"], ["--weight-decay", "0"], ["--lr-warmup-iters", "19"],
                                   ["--lazy-sampling-prob", "1"], ["--lazy-sampling-period", "1000"]])
def test_their_meaningful_neighbours_still_pass(flags):
    parse_args(tiny_args() + flags).validate(1)


@pytest.mark.parametrize("flag,value,match", [
    ("--max-new-tokens", "-3", r"--max-new-tokens -3 must be >= 1"),
    ("--temperature", "-1", r"--temperature -1.0 must be >= 0 \(0 decodes greedily"),
    ("--top-p", "1.5", r"--top-p 1.5 must be in \(0, 1\]"),
    ("--top-p", "0", r"--top-p 0.0 must be in \(0, 1\]"),
])
def test_generate_refuses_meaningless_sampling_flags(tmp_path, capsys, flag, value, match):
    """Checked before the checkpoint is read (--load names nothing here)."""
    rc = tool("tools/generate.py").main(["--load", str(tmp_path / "none"), "--prompt", "1 2", flag, value])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("generate: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize("script,extra", [
    ("tools/checkpoint/reshard.py", ["--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "1"]),
    ("tools/checkpoint/convert.py", ["--loader", "megaclap", "--saver", "megaclap"]),
])
def test_checkpoint_tools_refuse_to_write_over_their_input(tmp_path, capsys, script, extra):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    before = sorted(p.name for p in ckpt.iterdir())
    assert tool(script).main(["--load-dir", str(ckpt), "--save-dir", str(ckpt) + "/", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "is --load-dir" in err and "another --save-dir" in err, err
    assert sorted(p.name for p in ckpt.iterdir()) == before
