"""A Megatron-LM checkpoint's args -> megaclap's ModelConfig, refusing what megaclap cannot run.

Every setting of Megatron's args that changes the model's function is either honoured or makes
the import fail in one line naming it (tests/test_megatron_import.py has a case per setting):

    honoured   sizes, GQA, kv_channels = hidden / heads, learned or rotary positions (rotary_base,
               rotary_percent 1), LayerNorm / RMSNorm and their epsilon, GELU (exact or
               openai_gelu) / SwiGLU, linear biases, tied or untied output layer, vocabulary
               padding, and the zero-centred ("1p") norm: `layernorm_zero_centered_gamma`
               (Megatron since early 2026) or `apply_layernorm_1p` (before) -> every norm
               weight + 1 (`NORM_OFFSET_NAMES`), since megaclap's norms use the weight as is
    refused    FUNCTIONAL below, at any value but the one where Megatron computes what megaclap does

Settings that change only speed, memory or rounding (fusions, recomputation, fp32 residual,
query-key layer scaling, attention backend, precision) and training-only ones (dropout,
initialisation, QK-clip) are accepted: the weights mean the same.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from megaclap.checkpoint.keymaps import ConversionError
from megaclap.config import ModelConfig

OFF = (None, False, 0)
# Megatron arg -> (values that compute what megaclap computes, what it does otherwise)
FUNCTIONAL = {
    "num_experts": (OFF, "mixture-of-experts layers"),
    "num_moe_experts": (OFF, "mixture-of-experts layers"),
    "mtp_num_layers": (OFF, "multi-token prediction layers"),
    "multi_latent_attention": (OFF, "multi-latent attention"),
    "qk_layernorm": (OFF, "query/key layer norm"),
    "qk_l2_norm": (OFF, "query/key L2 norm"),
    "attention_output_gate": (OFF, "a gated attention output"),
    "softmax_type": ((None, "vanilla"), "an off-by-one or learnable softmax"),
    "softmax_scale": ((None,), "a custom softmax scale"),
    "window_size": ((None,), "sliding-window attention"),
    "experimental_attention_variant": ((None,), "a linear / sparse attention variant"),
    "linear_attention_freq": ((None,), "linear-attention layers"),
    "is_hybrid_model": (OFF, "Mamba / hybrid layers"),
    "hybrid_override_pattern": ((None,), "Mamba / hybrid layers"),
    "hybrid_layer_pattern": ((None,), "Mamba / hybrid layers"),
    "heterogeneous_layers_config_path": ((None,), "heterogeneous layers"),
    "heterogeneous_layers_config_encoded_json": ((None,), "heterogeneous layers"),
    "spec": ((None, []), "a custom layer spec"),
    "squared_relu": (OFF, "squared ReLU"),
    "quick_geglu": (OFF, "quick GeGLU"),
    "glu_linear_offset": (OFF, "an offset GLU"),
    "activation_func_clamp_value": ((None,), "a clamped activation"),
    "apply_residual_connection_post_layernorm": (OFF, "the residual taken after the layer norm"),
    "enable_mhc_connections": (OFF, "hyper-connections"),
    "rotary_interleaved": (OFF, "interleaved rotary embeddings"),
    "rotary_seq_len_interpolation_factor": ((None, 1, 1.0), "rotary position interpolation"),
    "use_rope_scaling": (OFF, "Llama-3.1 rope scaling"),
    "no_rope_freq": ((None,), "layers without rotary embeddings"),
    "use_mup": (OFF, "muP scaling"),
    "mup_output_mult": ((None, 1, 1.0), "muP output scaling"),
    "mup_attn_scale_power": ((None, 1, 1.0), "muP attention scaling"),
    "num_layers_per_virtual_pipeline_stage": (OFF, "virtual pipeline stages (model0, model1, ...)"),
    "virtual_pipeline_model_parallel_size": (OFF + (1,),
                                             "virtual pipeline stages (model0, model1, ...)"),
}
VIRTUAL = ("num_layers_per_virtual_pipeline_stage", "virtual_pipeline_model_parallel_size")
NORM_OFFSET_NAMES = ("input_layernorm.weight", "pre_mlp_layernorm.weight", "final_layernorm.weight")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConversionError(message)


def check_functional(a: dict, layout_free: bool = False) -> None:
    """One line naming the first setting megaclap cannot honour. layout_free: the checkpoint's
    tensors are global (torch_dist), so virtual pipelining does not matter."""
    for name, (allowed, what) in FUNCTIONAL.items():
        if layout_free and name in VIRTUAL:
            continue
        value = a.get(name)
        _require(value in allowed, f"the Megatron checkpoint sets {name}={value!r} ({what}), "
                                   "which megaclap does not implement")


def norm_offset(a: dict) -> float:
    """1.0 when Megatron's norms use (1 + weight) (the "1p" / zero-centred gamma), else 0.0."""
    return 1.0 if a.get("layernorm_zero_centered_gamma") or a.get("apply_layernorm_1p") else 0.0


def _model_config(**kw) -> ModelConfig:
    """ModelConfig from the fields it has (openai_gelu only exists where megaclap has that flag)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in kw.items() if k in names})


def config_from_args(a: dict, true_vocab_size: Optional[int] = None,
                     layout_free: bool = False) -> ModelConfig:
    """megaclap ModelConfig from a Megatron args dict; refuses what megaclap cannot express."""
    check_functional(a, layout_free)
    h, heads = a["hidden_size"], a["num_attention_heads"]
    _require(a.get("kv_channels") in (None, h // heads),
             f"--kv-channels {a.get('kv_channels')} != hidden / heads: not supported by megaclap")
    _require(float(a.get("rotary_percent", 1.0)) == 1.0,
             f"--rotary-percent {a.get('rotary_percent')}: only 1.0 is supported")
    pos = ("rope" if a.get("use_rotary_position_embeddings")
           else a.get("position_embedding_type", "learned_absolute"))
    _require(pos in ("learned_absolute", "rope"),
             f"--position-embedding-type {pos}: only learned_absolute and rope")
    norm = a.get("normalization", "LayerNorm")
    _require(norm in ("LayerNorm", "RMSNorm"), f"--normalization {norm}: only LayerNorm and RMSNorm")
    bias = a.get("add_bias_linear", True)
    _require(bias or not a.get("add_qkv_bias", False),
             "--add-qkv-bias without linear biases is not supported")
    _require(a.get("padded_vocab_size"), "the checkpoint's args have no padded_vocab_size")
    gqa = bool(a.get("group_query_attention")) and a.get("num_query_groups") not in (None, heads)
    max_pos = a.get("max_position_embeddings") or a.get("seq_length")
    return _model_config(
        num_layers=a["num_layers"], hidden_size=h, num_attention_heads=heads,
        ffn_hidden_size=a.get("ffn_hidden_size"), group_query_attention=gqa,
        num_query_groups=a.get("num_query_groups") if gqa else None,
        seq_length=a.get("seq_length") or max_pos, max_position_embeddings=max_pos,
        position_embedding_type=pos, rotary_base=float(a.get("rotary_base", 10000)), normalization=norm,
        norm_epsilon=a.get("norm_epsilon", a.get("layernorm_epsilon", 1e-5)),
        swiglu=bool(a.get("swiglu")), openai_gelu=bool(a.get("openai_gelu")),
        untie_embeddings_and_output_weights=bool(a.get("untie_embeddings_and_output_weights")),
        disable_bias_linear=not bias, init_method_std=a.get("init_method_std", 0.02),
        hidden_dropout=a.get("hidden_dropout", 0.1),
        attention_dropout=a.get("attention_dropout", 0.1),
        vocab_size=true_vocab_size or a["padded_vocab_size"],
        make_vocab_size_divisible_by=a.get("make_vocab_size_divisible_by") or 128)
