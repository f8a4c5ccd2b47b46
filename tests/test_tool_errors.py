"""Bad input files end a tool or a training run with one line naming the file and the flag, exit
code 2, the traceback in a file (issue 23, item 10): corrupt tokenizer files, train_tokenizer.py
inputs, convert's config.json and safetensors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from megaclap.data.tokenizers import build_tokenizer
from megaclap.errors import UserValueError
from megaclap.training.pretrain import main as train_main
from tests.convert_utils import tool
from tests.train_utils import tiny_args


def _one_error(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in err, err
    path = re.search(r"\(traceback in (\S+)\)$", lines[0])
    assert path is None or "Traceback" in open(path.group(1)).read()
    return lines[0]


@pytest.fixture
def gpt2_files(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["the pipeline sends activations"] * 20, vocab_size=280,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save_model(str(tmp_path))
    return str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")


def test_a_corrupt_sentencepiece_model_is_one_line_in_training(tmp_path, capsys):
    model = tmp_path / "bad.model"
    model.write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(UserValueError, match="not a readable sentencepiece model"):
        build_tokenizer("SentencePieceTokenizer", str(model))
    argv = [a for a in tiny_args(layers=2) if a not in ("--mock-data", "--vocab-size", "96")]
    assert train_main(argv + ["--data-path", str(tmp_path / "x"), "--tokenizer-type", "Llama2Tokenizer",
                              "--tokenizer-model", str(model)]) == 2
    line = _one_error(capsys.readouterr().err, "megaclap: error:")
    assert f"--tokenizer-model {model}: not a readable sentencepiece model" in line


@pytest.mark.parametrize("which", ["vocab", "merges"])
def test_corrupt_gpt2_bpe_files_are_one_line_in_preprocessing(tmp_path, capsys, gpt2_files, which):
    from tools import preprocess_data
    vocab, merges = gpt2_files
    bad = tmp_path / ("bad.json" if which == "vocab" else "bad.txt")
    bad.write_text('{"a": 0, "b": ' if which == "vocab" else "#version: 0.2\nonly-one-token-here\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "the pipeline"}) + "\n")
    files = (str(bad), merges) if which == "vocab" else (vocab, str(bad))
    assert preprocess_data.cli(["--input", str(tmp_path / "t.jsonl"), "--tokenizer-type", "GPT2BPETokenizer",
                                "--vocab-file", files[0], "--merge-file", files[1], "--output-prefix",
                                str(tmp_path / "o"), "--log-interval", "0"]) == 2
    line = _one_error(capsys.readouterr().err, "preprocess_data.py: error:")
    flag = "--vocab-file" if which == "vocab" else "--merge-file"
    assert f"{flag} {bad}: not a" in line, line


def test_a_corrupt_tokenizer_json_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserValueError, match=r"--tokenizer-model .*tokenizer.json: not a readable tokenizer.json"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))


@pytest.mark.parametrize("case", ["missing input", "missing key", "not json"])
def test_train_tokenizer_problems_are_one_line(tmp_path, capsys, case):
    from tools import train_tokenizer
    path = tmp_path / "d.jsonl"
    path.write_text({"missing input": "", "missing key": json.dumps({"body": "x"}) + "\n", "not json": "not json\n"}[case])
    inputs = str(tmp_path / "none*.jsonl") if case == "missing input" else str(path)
    assert train_tokenizer.cli(["--input", inputs, "--output-prefix", str(tmp_path / "tok"), "--vocab-size", "50"]) == 2
    line = _one_error(capsys.readouterr().err, "train_tokenizer.py: error:")
    expect = {"missing input": "no such file", "missing key": "no key 'text'; keys are ['body'] (set --json-keys)",
              "not json": "d.jsonl: cannot read it as jsonl"}[case]
    assert expect in line, line
    assert not list(tmp_path.glob("tok*"))


GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32, "n_head": 4,
               "n_positions": 16, "vocab_size": 96}


@pytest.mark.parametrize("case", ["config.json", "model.safetensors", "pytorch_model.bin"])
def test_convert_reports_a_corrupt_hf_file_in_one_line(tmp_path, capsys, case):
    hf = tmp_path / "hf"
    hf.mkdir()
    text = json.dumps(GPT2_CONFIG)
    (hf / "config.json").write_text(text[:40] if case == "config.json" else text)
    (hf / ("pytorch_model.bin" if case == "pytorch_model.bin" else "model.safetensors")).write_bytes(
        np.random.default_rng(2).bytes(5000))
    assert tool("tools/checkpoint/convert.py").main(["--model-type", "gpt2", "--loader", "hf", "--saver", "megaclap",
                                                     "--load-dir", str(hf), "--save-dir", str(tmp_path / "out")]) == 2
    line = _one_error(capsys.readouterr().err, "convert: error:")
    expect = "not valid JSON" if case == "config.json" else "weights file"
    assert f"{hf / case}: " in line and expect in line and "truncated or corrupt" in line, line
    assert not (tmp_path / "out").exists()
