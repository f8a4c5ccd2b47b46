"""`pretrain_gpt.py --help` is byte for byte the committed snapshot: every flag, its help text,
default, choices, group and order. Moving configuration code must not change it; a branch that
adds or changes a flag regenerates the snapshot on purpose and the diff shows what users see:

    COLUMNS=100 PYTHONPATH=$PWD python examples/pretrain_gpt/pretrain_gpt.py --help \
        > tests/data/pretrain_gpt_help.txt

(argparse's layout depends on the terminal width, fixed here by COLUMNS, and on the Python
version: the snapshot was written with Python 3.11.)
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(REPO, "tests", "data", "pretrain_gpt_help.txt")


def test_help_matches_snapshot():
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, os.path.join("examples", "pretrain_gpt", "pretrain_gpt.py"), "--help"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with open(SNAPSHOT) as f:
        expected = f.read()
    if out.stdout != expected:
        import difflib
        diff = "".join(difflib.unified_diff(expected.splitlines(True), out.stdout.splitlines(True),
                                            "snapshot", "now", n=1))
        raise AssertionError("--help differs from tests/data/pretrain_gpt_help.txt (regenerate it on purpose "
                             "with the command in this file's docstring):\n" + diff[:4000])
