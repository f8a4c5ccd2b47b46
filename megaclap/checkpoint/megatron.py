"""Megatron-LM checkpoints (mcore GPT names), either format -> one full megaclap state dict.

    read_megatron(dir, true_vocab_size=None) -> (full state dict, ModelConfig, iteration)

The directory layout and the two formats are in megatron_files.py; `torch_dist` tensors are
read whole by megatron_dist.py; the args -> ModelConfig rules (and what is refused) are in
megatron_args.py. The legacy `torch` format holds one pickle per model-parallel rank,
each a dict with "args" (the run's argparse Namespace), "iteration" and "model" (the stage's
state dict); the optimizer, scheduler and RNG entries are not read.

Parameter names are Megatron core's GPTModel names, which megaclap uses too
(`decoder.layers.{i}.self_attention.linear_qkv.weight`, ...), with three differences:
    - legacy layer indices are local to the pipeline stage (offset by earlier stages' layers);
    - the Transformer-Engine layer spec fuses the norms into the next linear:
      `self_attention.linear_qkv.layer_norm_{weight,bias}` is the input layernorm and
      `mlp.linear_fc1.layer_norm_{weight,bias}` the pre-MLP layernorm;
    - `*._extra_state` entries (TE's fp8 metadata) hold no weights and are ignored.
Legacy tensor-parallel shards are joined along the dim (and stride) of megaclap's own layer at
the source tp: QKV rows are grouped per query group ([q heads of the group, k, v]) in both
codebases and SwiGLU's fc1 is [gate_r; up_r] per rank, so the layouts agree. The vocabulary
rows are Megatron's padded vocabulary; `true_vocab_size` (convert.py's --true-vocab-size)
drops the padding, otherwise the padded size becomes the vocabulary. Zero-centred ("1p") norm
weights get their 1 added (megatron_args.norm_offset).
"""
from __future__ import annotations

import os
import re
from typing import Optional

from megaclap.checkpoint import megatron_dist
from megaclap.checkpoint.io import check_full, meta_stage, unshard
from megaclap.checkpoint.keymaps import VOCAB_PARAMS, ConversionError, unpad_vocab
from megaclap.checkpoint.megatron_args import NORM_OFFSET_NAMES, config_from_args, norm_offset
from megaclap.checkpoint.megatron_files import (MODEL_FILE, checkpoint_format, load_pickle, locate,
                                               shard_path)
from megaclap.config import ModelConfig

TE_FUSED_NORMS = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                  "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
                  "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
                  "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias"}
IGNORED = re.compile(r"(\._extra_state|rotary_pos_emb\.inv_freq)$")
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConversionError(message)


def _args(state: dict, where: str) -> dict:
    args = state.get("args") if isinstance(state, dict) else None
    _require(args is not None, f"{where}: no 'args' entry (expected a Megatron-LM checkpoint)")
    return vars(args) if not isinstance(args, dict) else args


def _rename(model: dict, where: str) -> dict:
    """Drop extra state, map TE fused-norm names; refuse pre-mcore (legacy) names."""
    out = {}
    for name, t in model.items():
        if IGNORED.search(name) or t is None:
            continue
        if name.startswith("language_model."):
            raise ConversionError(f"{where}: legacy (non-mcore) parameter names such as {name}; "
                                  "re-save the model with Megatron's --use-mcore-models, then convert")
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


def _partitions(cfg: ModelConfig, tp: int = 1) -> dict:
    """Full name -> megaclap's tp partition (dim, stride) at tp, for the model cfg describes."""
    stage = meta_stage(cfg, tp, 0, 0, cfg.num_layers, True, True)
    return {stage.global_name(n): getattr(q, "tp_partition", None)
            for n, q in stage.named_parameters()}


def _read_legacy(it_dir: str, true_vocab_size: Optional[int]) -> tuple[dict, dict, ModelConfig]:
    """(args, full tensors, ModelConfig) of a legacy checkpoint: shards merged over tp and pp."""
    pp_guess = 1 if os.path.isdir(os.path.join(it_dir, "mp_rank_00")) else 2
    first = load_pickle(shard_path(it_dir, 0, 0, pp_guess))
    a = _args(first, it_dir)
    _require("model" in first, f"{it_dir}: shard has no 'model' entry (expected Megatron-LM's "
             "model_optim_rng.pt; 'model0' means virtual pipelining, not supported)")
    tp, pp = a.get("tensor_model_parallel_size", 1), a.get("pipeline_model_parallel_size", 1)
    _require((pp == 1) == (pp_guess == 1),
             f"{it_dir}: directory names do not match the args' pp={pp}")
    cfg = config_from_args(a, true_vocab_size)
    partitions = _partitions(cfg, tp)
    parts, offset = {}, 0   # global name -> [tp shards]
    for p in range(pp):
        paths = [shard_path(it_dir, t, p, pp) for t in range(tp)]
        models = [_rename((first if (t, p) == (0, 0) else load_pickle(path))["model"], path)
                  for t, path in enumerate(paths)]
        models, n = _stage_global(models, offset)
        offset += n
        for name in models[0]:
            missing = [t for t, sd in enumerate(models) if name not in sd]
            _require(not missing, f"{it_dir}: tp rank {missing[:1]} of stage {p} has no {name}")
            parts[name] = [sd[name] for sd in models]
    _require(offset == cfg.num_layers,
             f"{it_dir}: the stages hold {offset} layers, the args say {cfg.num_layers}")
    full = {name: unshard(shards, partitions.get(name)) for name, shards in parts.items()}
    return a, full, cfg


def _read_dist(it_dir: str, true_vocab_size: Optional[int]) -> tuple[dict, dict, ModelConfig]:
    """(args, full tensors, ModelConfig) of a torch_dist checkpoint (tensors are global already)."""
    a = _args(megatron_dist.read_common(it_dir), it_dir)
    cfg = config_from_args(a, true_vocab_size, layout_free=True)
    return a, _rename(megatron_dist.read_model(it_dir), it_dir), cfg


def read_megatron(root: str, true_vocab_size: Optional[int] = None
                  ) -> tuple[dict, ModelConfig, int]:
    """(full megaclap state dict, ModelConfig, iteration) of the tracked checkpoint in root."""
    iteration, it_dir = locate(root)
    kind = checkpoint_format(it_dir)
    _require(kind is not None, f"{it_dir} holds neither mp_rank_00[_000]/{MODEL_FILE} (--ckpt-format "
             "torch) nor .metadata / metadata.json (torch_dist): the tracker names a missing or "
             "incomplete checkpoint")
    a, full, cfg = (_read_dist if kind == "torch_dist" else _read_legacy)(it_dir, true_vocab_size)
    if true_vocab_size is not None and true_vocab_size > a["padded_vocab_size"]:
        raise ConversionError(f"--true-vocab-size {true_vocab_size} is larger than the "
                              f"checkpoint's padded vocabulary {a['padded_vocab_size']}")
    if not cfg.untie_embeddings_and_output_weights:
        full.pop("output_layer.weight", None)   # the last stage's copy of the tied embedding
    expected = _partitions(cfg)
    unexpected = sorted(set(full) - set(expected))
    _require(not unexpected,
             f"{it_dir}: unexpected parameter {unexpected[:1]} for the model its args describe")
    for name in VOCAB_PARAMS:
        if name in full:
            full[name] = unpad_vocab(full[name], cfg.vocab_size, name)
    offset = norm_offset(a)
    for name in full:
        if offset and name.endswith(NORM_OFFSET_NAMES):
            full[name] = full[name] + offset   # Megatron's zero-centred norm computes (1 + weight)
    check_full(full, cfg)
    return full, cfg, iteration
