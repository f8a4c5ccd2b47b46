"""Megatron-LM legacy checkpoints in: a checkpoint written in Megatron's layout (tp=2 pp=2, TE
fused-norm names and _extra_state, or local names with a release tracker) from a transformers
reference model converts to megaclap at another tp x pp, and its logits match the reference."""
from __future__ import annotations

import os

import pytest
import torch

from megaclap.checkpoint import io
from tests.convert_utils import hf_model, ids, logits_worker, tool, whole_logits
from tests.dist import run_ranks
from tests.megatron_ckpt_utils import write_megatron


def convert(*argv) -> int:
    return tool("tools/checkpoint/convert.py").main([str(a) for a in argv])


def from_megatron(src, out, tp, pp, *extra) -> str:
    assert convert("--loader", "megatron", "--saver", "megaclap", "--load-dir", src, "--save-dir", out,
                   "--target-tensor-parallel-size", tp, "--target-pipeline-parallel-size", pp, *extra) == 0
    return str(out)


def test_llama_te_names_tp2pp2_to_tp2pp1(tmp_path, capsys):
    """RMSNorm, SwiGLU, GQA (4 heads, 2 groups), untied; TE fused norms; iteration tracker."""
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=False)
    write_megatron(tmp_path / "mg", model, "llama", tp=2, pp=2, te=True, iteration=7)
    ckpt = from_megatron(tmp_path / "mg", tmp_path / "mc", 2, 1, "--true-vocab-size", 100)
    assert "--hidden-dropout 0.0" in capsys.readouterr().out
    loaded = io.load_checkpoint(ckpt)
    assert (loaded.iteration, loaded.tp, loaded.pp, loaded.cfg.vocab_size) == (7, 2, 1, 100)
    assert loaded.cfg.swiglu and loaded.cfg.query_groups == 2 and loaded.cfg.normalization == "RMSNorm"
    tokens = ids()
    with torch.no_grad():
        expected = model(tokens).logits
    assert (whole_logits(ckpt, tokens) - expected).abs().max() < 1e-4


def test_gpt2_local_names_release_to_pipelined_tp1pp2(tmp_path):
    """LayerNorm, GELU (tanh, --openai-gelu), biases, tied embeddings; release tracker."""
    model = hf_model("gpt2", tmp_path / "hf")
    write_megatron(tmp_path / "mg", model, "gpt2", tp=2, pp=2, te=False, release=True)
    ckpt = from_megatron(tmp_path / "mg", tmp_path / "mc", 1, 2, "--true-vocab-size", 100)
    tokens = ids()
    with torch.no_grad():
        expected = model(tokens).logits
    outs = [o for o in run_ranks(logits_worker, 2, ckpt, 1, 2, tokens) if o is not None]
    assert len(outs) == 1 and (outs[0] - expected).abs().max() < 1e-4
    # without --true-vocab-size the padded vocabulary (128 * tp = 256 rows) is kept
    padded = from_megatron(tmp_path / "mg", tmp_path / "padded", 1, 1)
    assert io.load_checkpoint(padded).cfg.vocab_size == 256
    assert (whole_logits(padded, tokens)[..., :100] - expected).abs().max() < 1e-4
    # Megatron -> HF gives back the reference's tensors exactly
    from safetensors.torch import load_file
    assert convert("--loader", "megatron", "--saver", "hf", "--model-type", "gpt2", "--load-dir", tmp_path / "mg",
                   "--save-dir", tmp_path / "hf_back", "--true-vocab-size", 100) == 0
    back, ref = load_file(tmp_path / "hf_back" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(back) == sorted(k for k in ref if not k.endswith(".attn.bias"))
    assert all(torch.equal(back[k], ref[k]) for k in back)


def test_bad_megatron_checkpoints_are_refused(tmp_path, capsys):
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=False)
    assert convert("--loader", "megatron", "--saver", "megaclap", "--load-dir", tmp_path / "hf",
                   "--save-dir", tmp_path / "o") == 2
    assert "--load-dir" in capsys.readouterr().err
    write_megatron(tmp_path / "mg", model, "llama", tp=2, pp=1)
    os.remove(tmp_path / "mg" / "iter_0000007" / "mp_rank_01" / "model_optim_rng.pt")
    assert convert("--loader", "megatron", "--saver", "megaclap", "--load-dir", tmp_path / "mg",
                   "--save-dir", tmp_path / "o") == 2
    assert "mp_rank_01/model_optim_rng.pt is missing" in capsys.readouterr().err
    from megaclap.checkpoint.megatron import config_from_args
    from megaclap.checkpoint.keymaps import ConversionError
    with pytest.raises(ConversionError, match="--qk-layernorm"):
        config_from_args(dict(num_layers=2, hidden_size=32, num_attention_heads=4, padded_vocab_size=128,
                              qk_layernorm=True))
    assert not os.path.exists(tmp_path / "o")
