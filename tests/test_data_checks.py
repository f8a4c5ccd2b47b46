"""Data that is not what it claims to be (issue 23, items 7 and 8): an .idx over another run's
.bin, a wrong dtype byte, random bytes given as text, and merge_datasets.py over an existing
output with a truncated shard. Each is refused in one line (or warned about), and nothing that
was good before is changed."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from megaclap.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, IndexedDatasetError
from megaclap.training.pretrain import main as train_main
from tests.train_utils import tiny_args


def _corpus(prefix, docs: int = 64, seed: int = 0, dtype=np.uint16) -> str:
    prefix = str(prefix)
    b = IndexedDatasetBuilder(prefix + ".bin", dtype)
    rng = np.random.default_rng(seed)
    for _ in range(docs):
        b.add_document(rng.integers(0, 96, 40))
    b.finalize(prefix + ".idx")
    return prefix


def _error_lines(text: str) -> list:
    return [line for line in text.splitlines() if ": error: " in line]


def _digest(*paths) -> str:
    return hashlib.sha256(b"".join(open(p, "rb").read() for p in paths)).hexdigest()


def test_an_idx_over_a_longer_bin_of_another_run_is_refused(tmp_path, capsys):
    a, b = _corpus(tmp_path / "a", 64, seed=1), _corpus(tmp_path / "b", 80, seed=2)
    os.replace(b + ".bin", a + ".bin")  # a.idx now sits beside b's (longer) tokens
    with pytest.raises(IndexedDatasetError, match=r"a\.bin: \.bin is 6400 bytes but its \.idx describes 5120"):
        IndexedDataset(a)
    argv = [x for x in tiny_args(layers=2, extra=["--data-path", a, "--train-iters", "1", "--eval-iters", "0"])
            if x != "--mock-data"]
    assert train_main(argv) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "belongs to another run" in lines[0]


def test_an_idx_whose_dtype_byte_says_uint8_over_a_uint16_bin_is_refused(tmp_path):
    prefix = _corpus(tmp_path / "c")
    with open(prefix + ".idx", "r+b") as f:
        f.seek(17)
        f.write(bytes([1]))  # uint8: the pointers (2 bytes a token) no longer follow from the lengths
    with pytest.raises(IndexedDatasetError, match=r"sequence 1 starts at byte 80 .* put it at 40 \(uint8 tokens\)"):
        IndexedDataset(prefix)


def test_pointers_are_checked_across_read_chunks(tmp_path):
    prefix = _corpus(tmp_path / "d", docs=10)
    ds = IndexedDataset(prefix)
    assert ds._check_sequences(prefix + ".idx", len(ds), chunk=3) == os.path.getsize(prefix + ".bin")
    pointers = np.array(ds.sequence_pointers)
    pointers[7] += 2  # inside the third chunk of 3
    with open(prefix + ".idx", "r+b") as f:
        f.seek(34 + 4 * 10 + 8 * 7)
        f.write(pointers[7:8].tobytes())
    with pytest.raises(IndexedDatasetError, match="sequence 7 starts at byte"):
        ds._check_sequences(prefix + ".idx", len(ds), chunk=3)


def test_random_bytes_preprocessed_as_text_are_warned_about(tmp_path, capsys):
    from tools import preprocess_data
    noise = tmp_path / "noise.txt"
    noise.write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "words.txt").write_text("12 13 14\n\n15 16\n")
    summary = preprocess_data.main(["--input", str(noise), str(tmp_path / "words.txt"), "--tokenizer-type",
                                    "HuggingFaceTokenizer", "--tokenizer-model", _byte_level_tokenizer(tmp_path),
                                    "--output-prefix", str(tmp_path / "o"), "--log-interval", "0"])
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and "noise.txt" in warned[0], err  # words.txt is text: no warning
    assert "undecodable bytes (U+FFFD) or control characters" in warned[0]
    assert list(summary["not_text"]) == [str(noise)] and summary["not_text"][str(noise)] > 0.5


def _byte_level_tokenizer(tmp_path) -> str:
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["some words of text"] * 20, vocab_size=280, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    return path


def _merge_shards(tmp_path) -> str:
    (tmp_path / "shards").mkdir()
    for k in range(3):
        _corpus(tmp_path / "shards" / f"s{k}", docs=20, seed=k)
    return str(tmp_path / "shards")


def test_merge_over_an_existing_output_with_a_truncated_shard_keeps_the_output(tmp_path, capsys):
    from tools import merge_datasets
    shards, out = _merge_shards(tmp_path), str(tmp_path / "merged")
    assert merge_datasets.cli(["--input", shards, "--output-prefix", out]) == 0
    before = _digest(out + ".bin", out + ".idx")
    with open(os.path.join(shards, "s1.bin"), "r+b") as f:
        f.truncate(1000)
    capsys.readouterr()
    assert merge_datasets.cli(["--input", shards, "--output-prefix", out]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "s1.bin: .bin too short" in lines[0], lines
    assert _digest(out + ".bin", out + ".idx") == before
    assert sorted(os.listdir(tmp_path)) == ["merged.bin", "merged.idx", "shards"]  # no temporaries, no lock left


@pytest.mark.parametrize("case", ["missing input", "dtype mismatch", "output is an input"])
def test_merge_problems_are_one_line(tmp_path, capsys, case):
    from tools import merge_datasets
    a = _corpus(tmp_path / "a")
    other = {"missing input": str(tmp_path / "nothing"), "dtype mismatch": _corpus(tmp_path / "b", dtype=np.int32),
             "output is an input": a}[case]
    out = a if case == "output is an input" else str(tmp_path / "m")
    assert merge_datasets.cli(["--input", a, other, "--output-prefix", out]) == 2
    err = capsys.readouterr().err
    expect = {"missing input": "neither a directory nor a .bin/.idx prefix", "dtype mismatch": "dtype mismatch",
              "output is an input": "is one of the inputs"}[case]
    assert len(_error_lines(err)) == 1 and expect in err and "Traceback" not in err, err
