"""HF <-> megaclap conversion: logits against transformers at every tp x pp layout, a bit-exact
round trip, and clear errors on bad input."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from megaclap.checkpoint import io
from megaclap.checkpoint.hf import read_hf
from tests.convert_utils import hf_model, ids, logits_worker, tool, whole_logits
from tests.dist import run_ranks

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]


def convert(*argv: str) -> int:
    return tool("tools/checkpoint/convert.py").main(list(argv))


def to_megaclap(kind: str, hf_dir, out, tp: int = 1, pp: int = 1) -> str:
    rc = convert("--model-type", kind, "--loader", "hf", "--saver", "megaclap", "--load-dir", str(hf_dir),
                 "--save-dir", str(out), "--target-tensor-parallel-size", str(tp),
                 "--target-pipeline-parallel-size", str(pp))
    assert rc == 0
    return str(out)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logits_match_transformers_at_every_layout(kind, tmp_path):
    model = hf_model(kind, tmp_path / "hf")
    tokens = ids()
    with torch.no_grad():
        expected = model(tokens).logits
    for tp, pp in LAYOUTS:
        ckpt = to_megaclap(kind, tmp_path / "hf", tmp_path / f"tp{tp}pp{pp}", tp, pp)
        if tp * pp == 1:
            outs = [whole_logits(ckpt, tokens)]
        else:
            outs = [o for o in run_ranks(logits_worker, tp * pp, ckpt, tp, pp, tokens) if o is not None]
        assert len(outs) == tp
        for out in outs:
            assert out.shape == expected.shape
            assert (out - expected).abs().max() < 1e-4, (tp, pp)
    # the whole-model path merges shards: tp2pp2 loaded at world size 1
    assert (whole_logits(str(tmp_path / "tp2pp2"), tokens) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("kind,tied", [("gpt2", True), ("llama", False), ("llama", True)])
def test_round_trip_is_bit_identical(kind, tied, tmp_path):
    from transformers import AutoModelForCausalLM
    hf_model(kind, tmp_path / "hf", tie_word_embeddings=tied)
    ckpt = to_megaclap(kind, tmp_path / "hf", tmp_path / "mc", 2, 2)
    assert convert("--model-type", kind, "--loader", "megaclap", "--saver", "hf", "--load-dir", ckpt,
                   "--save-dir", str(tmp_path / "back")) == 0
    before, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert reloaded.config.tie_word_embeddings == tied
    assert not (tmp_path / "back" / "generation_config.json").exists()   # no bos/eos known
    if kind == "llama":
        assert reloaded.config.num_key_value_heads == 2 and reloaded.config.rms_norm_eps == 1e-4
        assert reloaded.config.rope_parameters["rope_theta"] == 5000.0


def test_gpt2_model_bin_without_prefix(tmp_path):
    """pytorch_model.bin saved from GPT2Model (no 'transformer.' prefix, attention-mask buffers)."""
    model = hf_model("gpt2", tmp_path / "hf")
    sd = {k[len("transformer."):]: v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    sd["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    os.makedirs(tmp_path / "bin")
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    os.replace(tmp_path / "hf" / "config.json", tmp_path / "bin" / "config.json")
    ckpt = to_megaclap("gpt2", tmp_path / "bin", tmp_path / "mc")
    tokens = ids()
    with torch.no_grad():
        assert (whole_logits(ckpt, tokens) - model(tokens).logits).abs().max() < 1e-4


def _error(capsys, *argv) -> str:
    assert convert(*argv) == 2
    return capsys.readouterr().err


def _hf_args(kind, src, dst, *extra):
    return ("--model-type", kind, "--loader", "hf", "--saver", "megaclap", "--load-dir", str(src),
            "--save-dir", str(dst), *extra)


def _edit_tensors(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_bad_hf_input_errors(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf_model("llama", hf)
    out = tmp_path / "out"
    assert "expected 'gpt2'" in _error(capsys, *_hf_args("gpt2", hf, out))
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "model_type 'bert'" in _error(capsys, *_hf_args("llama", hf, out))
    (hf / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}))
    assert "unsupported rope scaling 'yarn'" in _error(capsys, *_hf_args("llama", hf, out))
    (hf / "config.json").write_text(json.dumps(config))
    assert "does not divide the 4 attention heads" in _error(
        capsys, *_hf_args("llama", hf, out, "--target-tensor-parallel-size", "3"))
    _edit_tensors(hf, lambda t: t.update(extra=torch.zeros(1)))
    err = _error(capsys, *_hf_args("llama", hf, out))
    assert "unexpected keys" in err and "'extra'" in err
    _edit_tensors(hf, lambda t: (t.pop("extra"), t.pop("model.layers.1.mlp.up_proj.weight")))
    err = _error(capsys, *_hf_args("llama", hf, out))
    assert "missing keys" in err and "model.layers.1.mlp.up_proj.weight" in err
    _edit_tensors(hf, lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(64, 31)}))
    assert "has shape (64, 31), expected (64, 32)" in _error(capsys, *_hf_args("llama", hf, out))
    assert "no config.json" in _error(capsys, *_hf_args("llama", tmp_path / "nowhere", out))
    assert not out.exists()  # nothing half-written


def test_bad_megaclap_input_errors(tmp_path, capsys):
    hf_model("gpt2", tmp_path / "hf")
    ckpt = tmp_path / "mc"
    to_megaclap("gpt2", tmp_path / "hf", ckpt, 2, 1)
    back = ("--loader", "megaclap", "--saver", "hf", "--load-dir", str(ckpt), "--save-dir", str(tmp_path / "back"))
    assert "not a llama model" in _error(capsys, "--model-type", "llama", *back)
    shard = ckpt / "iter_0000000" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(shard, weights_only=False)
    state["args"]["model"]["vocab_size"] = 300
    torch.save(state, shard)
    assert "vocab_size 300 is larger than the padded size 256" in _error(capsys, "--model-type", "gpt2", *back)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("7")
    assert "points at iteration 7" in _error(capsys, "--model-type", "gpt2", *back)
    assert "no latest_checkpointed_iteration.txt" in _error(
        capsys, "--model-type", "gpt2", "--loader", "megaclap", "--saver", "hf", "--load-dir", str(tmp_path / "hf"),
        "--save-dir", str(tmp_path / "back"))
    assert not (tmp_path / "back").exists() and not list(tmp_path.glob("back.tmp*"))


def test_pad_vocab_refuses_a_larger_vocabulary():
    from megaclap.checkpoint.keymaps import ConversionError, pad_vocab
    assert pad_vocab(torch.ones(3, 2), 8).shape == (8, 2)
    with pytest.raises(ConversionError, match="vocabulary of 9 rows is larger than the padded size 8"):
        pad_vocab(torch.ones(9, 2), 8)


def test_save_failure_leaves_nothing(tmp_path):
    hf_model("gpt2", tmp_path / "hf")
    full, cfg = read_hf(str(tmp_path / "hf"), "gpt2")
    bad = dict(full)
    bad["decoder.final_layernorm.weight"] = torch.ones(31)
    with pytest.raises(ValueError, match="decoder.final_layernorm.weight has shape"):
        io.save_checkpoint(str(tmp_path / "mc"), bad, cfg, 1, 1)
    assert not (tmp_path / "mc").exists()


@pytest.mark.parametrize("resume_flag", ["--finetune", "--no-load-optim"])
def test_training_loads_converted_checkpoint(resume_flag, tmp_path):
    """The flags convert prints, plus --load, give a trainer holding the HF weights."""
    from megaclap.training.checkpointing import Checkpointer
    from tests.train_utils import make_trainer
    hf_model("llama", tmp_path / "hf")
    ckpt = to_megaclap("llama", tmp_path / "hf", tmp_path / "mc", 1, 1)
    loaded = io.load_checkpoint(ckpt)
    flags = tool("tools/checkpoint/convert.py").model_flags(loaded.cfg).split()
    tr = make_trainer(0, 1, flags + ["--seq-length", "16", "--micro-batch-size", "2", "--train-iters", "10",
                                     "--lazy-sampling-period", "1000", "--mock-data", "--load", ckpt, resume_flag])
    Checkpointer(tr.cfg, tr.ps).load(tr)
    assert tr.iteration == 0
    for name, p in tr.stage.named_parameters():
        assert torch.equal(p.detach()[: loaded.full[name].shape[0]], loaded.full[name]), name
    # continued pretraining on one repeated batch (--lazy-sampling-period 1000): the loss must fall
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(10)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


def test_llama_dropout_and_special_tokens_survive_conversion(tmp_path, capsys):
    """HF Llama has no hidden dropout: the converted model records 0 and the printed flags say so;
    bos/eos ids come back on export, with a generation_config.json."""
    from transformers import GenerationConfig
    hf_model("llama", tmp_path / "hf", bos_token_id=1, eos_token_id=2)
    capsys.readouterr()
    ckpt = to_megaclap("llama", tmp_path / "hf", tmp_path / "mc", 1, 1)
    assert "--hidden-dropout 0.0" in capsys.readouterr().out
    assert io.load_checkpoint(ckpt).cfg.hidden_dropout == 0.0
    assert convert("--model-type", "llama", "--loader", "megaclap", "--saver", "hf", "--load-dir", ckpt,
                   "--save-dir", str(tmp_path / "back")) == 0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    gen = GenerationConfig.from_pretrained(tmp_path / "back")
    assert (gen.bos_token_id, gen.eos_token_id) == (1, 2)
