"""Megatron-LM checkpoints in: a checkpoint written in Megatron's layout (legacy torch: tp=2 pp=2,
TE fused-norm names and _extra_state, or local names with a release tracker; torch_dist through
torch.distributed.checkpoint, stacked or per-layer names) from a transformers reference model
converts to megaclap at another tp x pp, and its logits match the reference; the zero-centred
("1p") norm is honoured under both of Megatron's names, every other setting that changes the
model's function is refused by name, and --load on a Megatron checkpoint names the converter."""
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
    from megaclap.checkpoint.megatron_args import config_from_args
    from megaclap.checkpoint.keymaps import ConversionError
    with pytest.raises(ConversionError, match="qk_layernorm=True"):
        config_from_args(dict(num_layers=2, hidden_size=32, num_attention_heads=4, padded_vocab_size=128,
                              qk_layernorm=True))
    assert not os.path.exists(tmp_path / "o")


# --- settings of the args: honoured or refused ---------------------------------------------------
@pytest.mark.parametrize("name", ["layernorm_zero_centered_gamma", "apply_layernorm_1p"])
def test_zero_centred_norms_are_honoured_under_both_names(tmp_path, name):
    """Megatron's 1p norms compute (1 + weight): the import adds the 1 (Llama's example sets it)."""
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=False)
    write_megatron(tmp_path / "mg", model, "llama", tp=1, pp=1, zero_centered=name)
    ckpt = from_megatron(tmp_path / "mg", tmp_path / "mc", 1, 1, "--true-vocab-size", 100)
    with torch.no_grad():
        expected = model(ids()).logits
    assert (whole_logits(ckpt, ids()) - expected).abs().max() < 1e-4


BASE_ARGS = dict(num_layers=2, hidden_size=32, num_attention_heads=4, padded_vocab_size=128)
FUNCTIONAL_VALUES = {   # a value of each setting at which Megatron computes something megaclap does not
    "num_experts": 8, "num_moe_experts": 8, "mtp_num_layers": 1, "multi_latent_attention": True,
    "qk_layernorm": True, "qk_l2_norm": True, "attention_output_gate": True, "softmax_type": "off-by-one",
    "softmax_scale": 0.5, "window_size": (128, 0), "experimental_attention_variant": "gated_delta_net",
    "linear_attention_freq": 4, "is_hybrid_model": True, "hybrid_override_pattern": "M*M*",
    "hybrid_layer_pattern": "M*M*", "heterogeneous_layers_config_path": "h.json",
    "heterogeneous_layers_config_encoded_json": "{}", "spec": ["my.module", "spec"], "squared_relu": True,
    "quick_geglu": True, "glu_linear_offset": 1.0, "activation_func_clamp_value": 7.0,
    "apply_residual_connection_post_layernorm": True, "enable_mhc_connections": True, "rotary_interleaved": True,
    "rotary_seq_len_interpolation_factor": 4, "use_rope_scaling": True, "no_rope_freq": 4, "use_mup": True,
    "mup_output_mult": 0.5, "mup_attn_scale_power": 0.5, "num_layers_per_virtual_pipeline_stage": 1,
    "virtual_pipeline_model_parallel_size": 2,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL_VALUES))
def test_each_functional_setting_is_refused_by_name(name):
    from megaclap.checkpoint.keymaps import ConversionError
    from megaclap.checkpoint.megatron_args import FUNCTIONAL, config_from_args
    assert set(FUNCTIONAL) == set(FUNCTIONAL_VALUES)   # a new setting needs its case here
    config_from_args(dict(BASE_ARGS, **{name: FUNCTIONAL[name][0][0]}))   # Megatron's default: accepted
    with pytest.raises(ConversionError, match=f"sets {name}="):
        config_from_args(dict(BASE_ARGS, **{name: FUNCTIONAL_VALUES[name]}))


def test_a_refused_setting_fails_the_conversion_in_one_line(tmp_path, capsys):
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=False)
    write_megatron(tmp_path / "mg", model, "llama", tp=1, pp=1, window_size=(8, 0))
    assert convert("--loader", "megatron", "--saver", "megaclap", "--load-dir", tmp_path / "mg",
                   "--save-dir", tmp_path / "o") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "convert:" in line]   # not HF's progress bar
    assert len(err) == 1 and "window_size=(8, 0) (sliding-window attention)" in err[0]
    assert not os.path.exists(tmp_path / "o")


# --- torch_dist --------------------------------------------------------------------------------------
def test_torch_dist_llama_tp2pp2_matches_legacy_and_transformers(tmp_path):
    """Stacked layer names, TE fused norms and extra state, args inside the checkpoint, 1p norms."""
    from megaclap.checkpoint.megatron import read_megatron
    from tests.megatron_dist_utils import write_megatron_dist
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=False)
    one_p = "layernorm_zero_centered_gamma"
    write_megatron_dist(tmp_path / "dist", model, "llama", tp=2, pp=2, zero_centered=one_p)
    write_megatron(tmp_path / "legacy", model, "llama", tp=2, pp=2, zero_centered=one_p)
    dist_full, dist_cfg, it = read_megatron(str(tmp_path / "dist"), 100)
    legacy_full, legacy_cfg, _ = read_megatron(str(tmp_path / "legacy"), 100)
    assert it == 7 and dist_cfg == legacy_cfg and sorted(dist_full) == sorted(legacy_full)
    assert all(torch.equal(dist_full[k], legacy_full[k]) for k in dist_full)
    ckpt = from_megatron(tmp_path / "dist", tmp_path / "mc", 2, 1, "--true-vocab-size", 100)
    with torch.no_grad():
        expected = model(ids()).logits
    assert (whole_logits(ckpt, ids()) - expected).abs().max() < 1e-4


def test_torch_dist_per_layer_names_and_common_pt(tmp_path):
    """Older Megatron: per-layer names (SwiGLU fc1 as _w/_v), args in common.pt, local names."""
    from megaclap.checkpoint.megatron import read_megatron
    from tests.megatron_dist_utils import write_megatron_dist
    model = hf_model("llama", tmp_path / "hf", tie_word_embeddings=True)
    write_megatron_dist(tmp_path / "dist", model, "llama", tp=2, pp=1, te=False, per_layer=True,
                        common_pt=True)
    assert os.path.isfile(tmp_path / "dist" / "iter_0000007" / "common.pt")
    full, cfg, _ = read_megatron(str(tmp_path / "dist"), 100)
    write_megatron(tmp_path / "legacy", model, "llama", tp=2, pp=1, te=False)
    legacy, _, _ = read_megatron(str(tmp_path / "legacy"), 100)
    assert sorted(full) == sorted(legacy) and all(torch.equal(full[k], legacy[k]) for k in full)


def test_load_on_a_megatron_checkpoint_names_the_converter(tmp_path, capsys):
    from megaclap.checkpoint.format import CheckpointError
    from megaclap.checkpoint.megatron_files import refuse_megatron_checkpoint
    from megaclap.training.pretrain import main
    from tests.megatron_dist_utils import write_megatron_dist
    model = hf_model("gpt2", tmp_path / "hf")
    write_megatron_dist(tmp_path / "dist", model, "gpt2", tp=1, pp=1)
    write_megatron(tmp_path / "legacy", model, "gpt2", tp=1, pp=1, release=True)
    for root, kind in ((tmp_path / "dist", "torch_dist"), (tmp_path / "legacy", "legacy torch")):
        with pytest.raises(CheckpointError, match=f"Megatron-LM {kind} checkpoint .* convert it first: python "
                                                  "tools/checkpoint/convert.py --loader megatron"):
            refuse_megatron_checkpoint(str(root))
    converted = from_megatron(tmp_path / "dist", tmp_path / "mc", 1, 1)   # megaclap's own: no complaint
    refuse_megatron_checkpoint(converted)
    argv = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
            "--vocab-size", "100", "--micro-batch-size", "2", "--mock-data", "--train-iters", "1",
            "--load", str(tmp_path / "dist")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tools/checkpoint/convert.py --loader megatron" in err
