"""Generation from converted checkpoints: greedy ids equal transformers' generate, whole or
pipelined (tp x pp with send/recv), and the CLI with NullTokenizer ids."""
from __future__ import annotations

import pytest
import torch

from megaclap.checkpoint.generate import generate, load_for_inference, sample_token
from megaclap.parallel.state import ParallelState
from tests.convert_utils import hf_model, tool
from tests.dist import run_ranks

PROMPT = [5, 17, 3, 42, 9]


def _convert(kind: str, tmp_path, tp: int, pp: int, **overrides):
    model = hf_model(kind, tmp_path / "hf", **overrides)
    ckpt = str(tmp_path / f"tp{tp}pp{pp}")
    rc = tool("tools/checkpoint/convert.py").main([
        "--model-type", kind, "--loader", "hf", "--saver", "megaclap", "--load-dir", str(tmp_path / "hf"),
        "--save-dir", ckpt, "--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)])
    assert rc == 0
    return model, ckpt


def _hf_greedy(model, n: int) -> list:
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_matches_transformers(kind, tmp_path):
    model, ckpt = _convert(kind, tmp_path, 2, 1)
    stage = load_for_inference(ckpt)  # world size 1: shards merged
    assert generate(stage, PROMPT, 12) == _hf_greedy(model, 12)


def _pipelined(rank: int, world: int, ckpt: str, tp: int, pp: int):
    ps = ParallelState(tp, pp, world, rank, torch.device("cpu"))
    stage = load_for_inference(ckpt, ps)
    return generate(stage, PROMPT, 10, ps), generate(stage, PROMPT, 10, ps, greedy=False, top_p=0.9, seed=3)


def test_pipelined_generation_matches_whole_model(tmp_path):
    model, ckpt = _convert("llama", tmp_path, 2, 2)
    results = run_ranks(_pipelined, 4, ckpt, 2, 2)
    whole = load_for_inference(ckpt)
    expected = (generate(whole, PROMPT, 10), generate(whole, PROMPT, 10, greedy=False, top_p=0.9, seed=3))
    assert expected[0] == _hf_greedy(model, 10)
    assert all(tuple(r) == expected for r in results)


def test_learned_positions_stop_at_the_table_end(tmp_path):
    _, ckpt = _convert("gpt2", tmp_path, 1, 1, n_positions=8)
    assert len(generate(load_for_inference(ckpt), PROMPT, 10)) == 8 - len(PROMPT) + 1


def test_sample_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample_token(logits, True, 1.0, 1.0, g) == 1
    assert sample_token(logits, False, 1.0, 0.01, g) == 1  # nucleus of one token
    draws = {sample_token(logits, False, 1.0, 0.6, g) for _ in range(50)}
    assert draws == {1, 3}


def test_cli_null_tokenizer(tmp_path, capsys):
    model, ckpt = _convert("llama", tmp_path, 1, 2)
    capsys.readouterr()
    rc = tool("tools/generate.py").main(["--load", ckpt, "--prompt", " ".join(map(str, PROMPT)),
                                         "--max-new-tokens", "6", "--greedy", "--ignore-eod"])
    assert rc == 0
    assert capsys.readouterr().out.split() == [str(t) for t in _hf_greedy(model, 6)]


def test_cli_errors(tmp_path, capsys):
    main = tool("tools/generate.py").main
    assert main(["--load", str(tmp_path / "none"), "--prompt", "1"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    _, ckpt = _convert("gpt2", tmp_path, 1, 1)
    assert main(["--load", ckpt, "--prompt", "3 100"]) == 2
    assert "token ids in [0, 100)" in capsys.readouterr().err
    long_prompt = " ".join(["7"] * 33)   # the tiny GPT-2 has 32 learned positions
    assert main(["--load", ckpt, "--prompt", long_prompt]) == 2
    err = capsys.readouterr().err
    assert "--prompt is 33 tokens, longer than the model's position table (32" in err
    assert main(["--load", ckpt, "--prompt", " ".join(["7"] * 32), "--max-new-tokens", "3", "--ignore-eod"]) == 0
    assert len(capsys.readouterr().out.split()) == 1   # a full table leaves room for one token
