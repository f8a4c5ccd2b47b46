"""Megatron-LM legacy torch checkpoints (mcore GPT names) -> one full megaclap state dict.

    read_megatron(dir, true_vocab_size=None) -> (full state dict, ModelConfig, iteration)

What is read (Megatron-LM's `--ckpt-format torch` layout):

    <dir>/latest_checkpointed_iteration.txt      an iteration number, or "release"
    <dir>/iter_0000100/ (or <dir>/release/)
        mp_rank_TT/model_optim_rng.pt             pp = 1
        mp_rank_TT_PPP/model_optim_rng.pt         pp > 1
    each a dict with "args" (the run's argparse Namespace), "iteration" and "model" (the
    stage's state dict); the optimizer, scheduler and RNG entries are not read.

Parameter names are Megatron core's GPTModel names, which megaclap uses too
(`decoder.layers.{i}.self_attention.linear_qkv.weight`, ...), with three differences:
    - layer indices are local to the pipeline stage (offset by the layers of earlier stages);
    - the Transformer-Engine layer spec fuses the norms into the next linear:
      `self_attention.linear_qkv.layer_norm_{weight,bias}` is the input layernorm and
      `mlp.linear_fc1.layer_norm_{weight,bias}` the pre-MLP layernorm;
    - `*._extra_state` entries (TE's fp8 metadata) hold no weights and are ignored.
Tensor-parallel shards are joined along the dim (and stride) of megaclap's own layer at the
source tp: QKV rows are grouped per query group ([q heads of the group, k, v]) in both
codebases and SwiGLU's fc1 is [gate_r; up_r] per rank, so the layouts agree. The
vocabulary rows are Megatron's padded vocabulary; `true_vocab_size` (convert.py's
--true-vocab-size) drops the padding, otherwise the padded size becomes the vocabulary.

The args Namespace may hold Megatron classes (enums); they are unpickled as inert stubs,
so Megatron-LM need not be installed.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import types
from typing import Optional

import torch

from megaclap.checkpoint.io import check_full, meta_stage, unshard
from megaclap.checkpoint.keymaps import VOCAB_PARAMS, ConversionError, unpad_vocab
from megaclap.config import ModelConfig

TRACKER = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
TE_FUSED_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                  "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
                  "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
                  "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias"}
IGNORED = re.compile(r"(\._extra_state|rotary_pos_emb\.inv_freq)$")
# Megatron args that change the maths in ways megaclap does not implement: the values allowed
OFF = (None, False, 0)
UNSUPPORTED = {"num_experts": OFF, "qk_layernorm": OFF, "apply_layernorm_1p": OFF, "squared_relu": OFF,
               "rotary_interleaved": OFF, "use_rope_scaling": OFF, "multi_latent_attention": OFF,
               "apply_residual_connection_post_layernorm": OFF, "num_layers_per_virtual_pipeline_stage": OFF,
               "virtual_pipeline_model_parallel_size": OFF + (1,)}


# --- reading shards without Megatron installed ---------------------------------------------------
class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if module.split(".")[0] in ("megatron", "transformer_engine", "apex", "modelopt"):
                return type(name, (_Stub,), {"__module__": module})
            raise


class _Stub:
    """Stands in for an object of a class that cannot be imported here (never used)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="megaclap_megatron_pickle")


def _load(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing: the Megatron checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except ConversionError:
        raise
    except Exception as e:  # truncated zip, pickle garbage
        raise ConversionError(f"{path}: cannot read this Megatron checkpoint shard ({type(e).__name__}: {e}); "
                              "the file is truncated or corrupt") from e


def locate(root: str) -> tuple[int, str]:
    """(iteration, directory) named by the tracker; release checkpoints are iteration 0."""
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        raise ConversionError(f"--load-dir {root}: no {TRACKER}; expected a Megatron-LM checkpoint "
                              "directory (--ckpt-format torch)")
    text = open(tracker).read().strip()
    if text == "release":
        return 0, os.path.join(root, "release")
    if not text.isdigit():
        raise ConversionError(f"{tracker} holds {text!r}, expected an iteration number or 'release'")
    return int(text), os.path.join(root, f"iter_{int(text):07d}")


def _shard_path(it_dir: str, t: int, p: int, pp: int) -> str:
    name = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
    return os.path.join(it_dir, name, MODEL_FILE)


# --- args -> ModelConfig ------------------------------------------------------------------------
def _model_config(**kw) -> ModelConfig:
    """ModelConfig from the fields it has (openai_gelu only exists where megaclap has that flag)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in kw.items() if k in names})


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConversionError(message)


def config_from_args(a: dict, true_vocab_size: Optional[int] = None) -> ModelConfig:
    """megaclap ModelConfig from a Megatron args dict; refuses what megaclap cannot express."""
    for name, allowed in UNSUPPORTED.items():
        _require(a.get(name) in allowed, f"the Megatron checkpoint uses --{name.replace('_', '-')} {a.get(name)}, "
                                         "which megaclap does not support")
    h, heads = a["hidden_size"], a["num_attention_heads"]
    _require(a.get("kv_channels") in (None, h // heads),
             f"--kv-channels {a.get('kv_channels')} != hidden / heads: not supported by megaclap")
    _require(float(a.get("rotary_percent", 1.0)) == 1.0, f"--rotary-percent {a.get('rotary_percent')}: only 1.0 is supported")
    pos = "rope" if a.get("use_rotary_position_embeddings") else a.get("position_embedding_type", "learned_absolute")
    _require(pos in ("learned_absolute", "rope"), f"--position-embedding-type {pos}: only learned_absolute and rope")
    norm = a.get("normalization", "LayerNorm")
    _require(norm in ("LayerNorm", "RMSNorm"), f"--normalization {norm}: only LayerNorm and RMSNorm")
    bias = a.get("add_bias_linear", True)
    _require(bias or not a.get("add_qkv_bias", False), "--add-qkv-bias without linear biases is not supported")
    _require(a.get("padded_vocab_size"), "the checkpoint's args have no padded_vocab_size")
    gqa = bool(a.get("group_query_attention")) and a.get("num_query_groups") not in (None, heads)
    max_pos = a.get("max_position_embeddings") or a.get("seq_length")
    return _model_config(
        num_layers=a["num_layers"], hidden_size=h, num_attention_heads=heads, ffn_hidden_size=a.get("ffn_hidden_size"),
        group_query_attention=gqa, num_query_groups=a.get("num_query_groups") if gqa else None,
        seq_length=a.get("seq_length") or max_pos, max_position_embeddings=max_pos, position_embedding_type=pos,
        rotary_base=float(a.get("rotary_base", 10000)), normalization=norm,
        norm_epsilon=a.get("norm_epsilon", a.get("layernorm_epsilon", 1e-5)), swiglu=bool(a.get("swiglu")),
        openai_gelu=bool(a.get("openai_gelu")),
        untie_embeddings_and_output_weights=bool(a.get("untie_embeddings_and_output_weights")),
        disable_bias_linear=not bias, init_method_std=a.get("init_method_std", 0.02),
        hidden_dropout=a.get("hidden_dropout", 0.1), attention_dropout=a.get("attention_dropout", 0.1),
        vocab_size=true_vocab_size or a["padded_vocab_size"],
        make_vocab_size_divisible_by=a.get("make_vocab_size_divisible_by") or 128)


# --- merging shards -----------------------------------------------------------------------------
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _rename(model: dict, where: str) -> dict:
    """Drop extra state, map TE fused-norm names; refuse pre-mcore (legacy) names."""
    out = {}
    for name, t in model.items():
        if IGNORED.search(name) or t is None:
            continue
        if name.startswith("language_model."):
            raise ConversionError(f"{where}: legacy (non-mcore) parameter names such as {name}; re-save the "
                                  "model with Megatron's --use-mcore-models, then convert")
        m = _LAYER.match(name)
        if m and m.group(2) in TE_FUSED_NORMS:
            name = f"decoder.layers.{m.group(1)}.{TE_FUSED_NORMS[m.group(2)]}"
        out[name] = t
    return out


def _stage_global(models: list, offset: int) -> tuple[list, int]:
    """Per-tp-rank dicts with global layer indices, and the stage's layer count."""
    local = {int(m.group(1)) for m in map(_LAYER.match, models[0]) if m}
    n = max(local) + 1 if local else 0

    def rename(name):
        m = _LAYER.match(name)
        return f"decoder.layers.{int(m.group(1)) + offset}.{m.group(2)}" if m else name
    return [{rename(k): v for k, v in sd.items()} for sd in models], n


def read_megatron(root: str, true_vocab_size: Optional[int] = None) -> tuple[dict, ModelConfig, int]:
    """(full megaclap state dict, ModelConfig, iteration) of the tracked checkpoint in root."""
    iteration, it_dir = locate(root)
    if not any(os.path.isdir(os.path.join(it_dir, d)) for d in ("mp_rank_00", "mp_rank_00_000")):
        raise ConversionError(f"{it_dir} holds no mp_rank_00[_000]/{MODEL_FILE}: the tracker names a missing "
                              "or incomplete checkpoint")
    pp_guess = 1 if os.path.isdir(os.path.join(it_dir, "mp_rank_00")) else 2
    first = _load(_shard_path(it_dir, 0, 0, pp_guess))
    args = first.get("args")
    _require(args is not None and "model" in first, f"{it_dir}: shard has no 'args' / 'model' entries "
             "(expected Megatron-LM's model_optim_rng.pt; 'model0' means virtual pipelining, not supported)")
    a = vars(args) if not isinstance(args, dict) else args
    tp, pp = a.get("tensor_model_parallel_size", 1), a.get("pipeline_model_parallel_size", 1)
    _require((pp == 1) == (pp_guess == 1), f"{it_dir}: directory names do not match the args' pp={pp}")
    cfg = config_from_args(a, true_vocab_size)
    if true_vocab_size is not None and true_vocab_size > a["padded_vocab_size"]:
        raise ConversionError(f"--true-vocab-size {true_vocab_size} is larger than the checkpoint's "
                              f"padded vocabulary {a['padded_vocab_size']}")
    parts = {}   # global name -> [tp shards]
    offset = 0
    for p in range(pp):
        models = [_rename((first if (t, p) == (0, 0) else _load(_shard_path(it_dir, t, p, pp)))["model"],
                          _shard_path(it_dir, t, p, pp)) for t in range(tp)]
        models, n = _stage_global(models, offset)
        offset += n
        for name in models[0]:
            if name == "output_layer.weight" and not cfg.untie_embeddings_and_output_weights:
                continue   # the last stage's copy of the tied embedding
            missing = [t for t, sd in enumerate(models) if name not in sd]
            _require(not missing, f"{it_dir}: tp rank {missing[:1]} of stage {p} has no {name}")
            parts[name] = [sd[name] for sd in models]
    _require(offset == cfg.num_layers, f"{it_dir}: the stages hold {offset} layers, the args say {cfg.num_layers}")
    stage = meta_stage(cfg, tp, 0, 0, cfg.num_layers, True, True)
    partitions = {stage.global_name(n): getattr(q, "tp_partition", None) for n, q in stage.named_parameters()}
    full = {}
    for name, shards in parts.items():
        if name not in partitions:
            raise ConversionError(f"{it_dir}: unexpected parameter {name} for the model its args describe")
        full[name] = unshard(shards, partitions[name])
    for name in VOCAB_PARAMS:
        if name in full:
            full[name] = unpad_vocab(full[name], cfg.vocab_size, name)
    check_full(full, cfg)
    return full, cfg, iteration
