"""Hugging Face model folders (config.json + safetensors or pytorch_model.bin), local only.

    read_hf(dir, model_type)           -> (full megaclap state dict, ModelConfig)
    special_tokens(dir)                -> {bos_token_id, eos_token_id} that config.json knows
    write_hf(dir, model_type, full, cfg, special)  writes config.json + model.safetensors
                                          (+ generation_config.json when bos/eos are known)

Config fields mapped (anything else that changes the maths is refused, by name):
    GPT-2: n_embd, n_layer, n_head, n_inner, n_positions, layer_norm_epsilon, vocab_size,
           tie_word_embeddings, initializer_range, resid_pdrop, attn_pdrop
    Llama: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
           num_key_value_heads, rms_norm_eps, rope_theta (or rope_parameters), vocab_size,
           max_position_embeddings, tie_word_embeddings, initializer_range, attention_dropout
           (HF Llama has no hidden dropout: the converted model records --hidden-dropout 0)
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional

import torch

from megaclap.checkpoint.io import model_shapes
from megaclap.checkpoint.keymaps import KEYMAPS, ConversionError, hf_to_megaclap, megaclap_to_hf
from megaclap.config import ModelConfig

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConversionError(message)


def _rope_theta(c: dict) -> float:
    params = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    _require(kind == "default", f"unsupported rope scaling {kind!r}: only plain RoPE (rope_type 'default') is supported")
    return float(c.get("rope_theta", params.get("rope_theta", 10000.0)))


def _model_config(**kw) -> ModelConfig:
    """ModelConfig from the fields it has."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in kw.items() if k in names})


def _gpt2_config(c: dict) -> ModelConfig:
    act = c.get("activation_function", "gelu_new")
    _require(act in ("gelu_new", "gelu_pytorch_tanh", "gelu"),
             f"unsupported GPT-2 activation_function {act!r}: expected gelu_new (--openai-gelu) or gelu")
    _require(c.get("scale_attn_weights", True) and not c.get("scale_attn_by_inverse_layer_idx", False),
             "unsupported GPT-2 attention scaling: expected scale_attn_weights=true, "
             "scale_attn_by_inverse_layer_idx=false")
    return _model_config(
        num_layers=c["n_layer"], hidden_size=c["n_embd"], num_attention_heads=c["n_head"],
        ffn_hidden_size=c.get("n_inner") or 4 * c["n_embd"], seq_length=c["n_positions"],
        max_position_embeddings=c["n_positions"], norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
        vocab_size=c["vocab_size"], untie_embeddings_and_output_weights=not c.get("tie_word_embeddings", True),
        init_method_std=c.get("initializer_range", 0.02), hidden_dropout=c.get("resid_pdrop", 0.0),
        attention_dropout=c.get("attn_pdrop", 0.0), openai_gelu=act != "gelu")


def _llama_config(c: dict) -> ModelConfig:
    _require(c.get("hidden_act", "silu") == "silu", f"unsupported Llama hidden_act {c.get('hidden_act')!r}: expected silu")
    _require(not c.get("attention_bias", False) and not c.get("mlp_bias", False),
             "unsupported Llama biases: expected attention_bias=false and mlp_bias=false")
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    _require(c.get("head_dim") in (None, hidden // heads),
             f"unsupported Llama head_dim {c.get('head_dim')}: expected hidden_size / num_attention_heads = {hidden // heads}")
    kv = c.get("num_key_value_heads") or heads
    return ModelConfig(
        num_layers=c["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
        ffn_hidden_size=c["intermediate_size"], group_query_attention=kv != heads,
        num_query_groups=kv if kv != heads else None, seq_length=c["max_position_embeddings"],
        max_position_embeddings=c["max_position_embeddings"], position_embedding_type="rope",
        rotary_base=_rope_theta(c), normalization="RMSNorm", norm_epsilon=c.get("rms_norm_eps", 1e-6),
        swiglu=True, untie_embeddings_and_output_weights=not c.get("tie_word_embeddings", False),
        disable_bias_linear=True, init_method_std=c.get("initializer_range", 0.02), hidden_dropout=0.0,
        attention_dropout=c.get("attention_dropout", 0.0), vocab_size=c["vocab_size"])


def config_from_hf(model_type: str, c: dict, make_vocab_size_divisible_by: int = 128) -> ModelConfig:
    """megaclap ModelConfig from an HF config.json dict."""
    _require(model_type in ARCHITECTURES, f"unsupported --model-type {model_type!r}: expected one of {list(ARCHITECTURES)}")
    found = c.get("model_type")
    _require(found == model_type, f"config.json has model_type {found!r} ({c.get('architectures')}), "
                                  f"expected {model_type!r}; supported: {list(ARCHITECTURES)}")
    try:
        cfg = _gpt2_config(c) if model_type == "gpt2" else _llama_config(c)
    except KeyError as e:
        raise ConversionError(f"config.json lacks {e.args[0]!r}, expected for a {model_type} model") from None
    cfg.make_vocab_size_divisible_by = make_vocab_size_divisible_by
    return cfg


def check_flavour(model_type: str, cfg: ModelConfig) -> None:
    """Refuse exporting a megaclap model that the HF architecture cannot express."""
    want = {"gpt2": dict(normalization="LayerNorm", position_embedding_type="learned_absolute", swiglu=False,
                         disable_bias_linear=False),
            "llama": dict(normalization="RMSNorm", position_embedding_type="rope", swiglu=True,
                          disable_bias_linear=True)}[model_type]
    wrong = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
    _require(not wrong, f"this checkpoint is not a {model_type} model: {wrong}, expected {want}")


def config_to_hf(model_type: str, cfg: ModelConfig, dtype: torch.dtype, special: Optional[dict] = None) -> dict:
    """HF config.json dict for a megaclap ModelConfig (bos/eos ids from special, else null)."""
    check_flavour(model_type, cfg)
    special = {"bos_token_id": None, "eos_token_id": None, **(special or {})}
    common = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": not cfg.untie_embeddings_and_output_weights,
              "initializer_range": cfg.init_method_std, "dtype": str(dtype).replace("torch.", "")}
    if model_type == "gpt2":
        return {**common, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_attention_heads,
                "n_inner": cfg.ffn, "n_positions": cfg.max_position_embeddings or cfg.seq_length,
                "layer_norm_epsilon": cfg.norm_epsilon, "activation_function": "gelu_new" if cfg.openai_gelu else "gelu",
                "resid_pdrop": cfg.hidden_dropout, "embd_pdrop": cfg.hidden_dropout, "attn_pdrop": cfg.attention_dropout,
                **special}
    return {**common, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.query_groups, "head_dim": cfg.head_dim, "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_epsilon, "rope_theta": cfg.rotary_base,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base},
            "max_position_embeddings": cfg.max_position_embeddings or cfg.seq_length,
            "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout,
            **special}


def read_json(path: str) -> dict:
    """A JSON file of an HF folder; ConversionError naming it when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e}); the file is truncated or corrupt") from e


def _load_weights(path: str) -> dict:
    """One weights file (.safetensors or a torch pickle); ConversionError naming it when unreadable."""
    from safetensors.torch import load_file
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # SafetensorError, UnpicklingError, RuntimeError of a truncated zip, ...
        kind = "safetensors" if path.endswith(".safetensors") else "torch"
        raise ConversionError(f"{path}: cannot read this {kind} weights file ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); the file is "
                              "truncated or corrupt: copy it again") from e


def _read_tensors(path: str) -> dict:
    """Every tensor of an HF folder: model.safetensors, a sharded index, or pytorch_model.bin."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(path, index)):
            files = sorted(set(read_json(os.path.join(path, index))["weight_map"].values()))
            out = {}
            for name in files:
                out.update(_load_weights(os.path.join(path, name)))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return _load_weights(os.path.join(path, name))
    raise ConversionError(f"{path}: no model.safetensors, pytorch_model.bin or sharded index found "
                          "(expected a local Hugging Face model folder)")


def read_hf(path: str, model_type: str, make_vocab_size_divisible_by: int = 128) -> tuple[dict, ModelConfig]:
    """(full megaclap state dict, ModelConfig) from a local HF folder."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{path}: no config.json (expected a local Hugging Face model folder)")
    cfg = config_from_hf(model_type, read_json(config_path), make_vocab_size_divisible_by)
    tensors = _read_tensors(path)
    if model_type == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        # saved from GPT2Model (e.g. openai-community/gpt2): no "transformer." prefix
        tensors = {k if k.startswith("lm_head.") else "transformer." + k: v for k, v in tensors.items()}
    full = hf_to_megaclap(KEYMAPS[model_type], cfg, tensors, model_shapes(cfg), source=path)
    return full, cfg


def special_tokens(path: str) -> dict:
    """{bos_token_id, eos_token_id} of an HF folder (generation_config.json, else config.json), known ones only."""
    out = {}
    for name in ("config.json", "generation_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            c = read_json(file)
            out.update({k: c[k] for k in ("bos_token_id", "eos_token_id") if isinstance(c.get(k), (int, list))})
    return out


def write_hf(path: str, model_type: str, full: dict, cfg: ModelConfig, special: Optional[dict] = None) -> None:
    """config.json + model.safetensors that transformers' from_pretrained(path) loads, and a
    generation_config.json when special (bos/eos token ids) knows any."""
    from safetensors.torch import save_file
    tensors = megaclap_to_hf(KEYMAPS[model_type], cfg, full, model_shapes(cfg))
    dtype = next(iter(tensors.values())).dtype
    special = {k: v for k, v in (special or {}).items() if v is not None}
    config = config_to_hf(model_type, cfg, dtype, special)
    if os.path.isdir(path) and os.listdir(path):
        raise ConversionError(f"{path} exists and is not empty; choose a new --save-dir")
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if special:
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(special, f, indent=2, sort_keys=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        os.rmdir(path)
    os.replace(tmp, path)
