"""Whole megaclap checkpoints <-> one full (unsharded) state dict, offline, on CPU.

The full state dict uses the names of a tp=1, pp=1 GPTStage (global layer indices) and
holds exactly vocab_size vocabulary rows; `shard_state` cuts any tp x pp layout from it
(padding the vocabulary for that tp). Which dim a parameter is split along, and with what
stride, is read off a GPTStage built on the meta device (each parameter's `.tp_partition`).

Written checkpoints use megaclap.checkpoint.format (the same schema, atomic commit and
tracker as training), so `--load` (with `--finetune` or `--no-load-optim` for converted
weights, which carry no optimizer state) picks them up.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable, Optional

import torch

from megaclap.checkpoint.keymaps import VOCAB_PARAMS, ConversionError, pad_vocab, unpad_vocab
from megaclap.config import MegaclapConfig, ModelConfig, ParallelConfig
from megaclap.config.parallel import layer_ranges
from megaclap.locks import lock_dir
from megaclap.model.gpt import GPTStage
from megaclap.model.init import shard
from megaclap.parallel.state import GroupInfo
from megaclap.checkpoint import format as fmt
from megaclap.checkpoint.format import (MODEL_FILE, TRACKER, CheckpointError, iter_dir, rank_dir,  # noqa: F401
                                       read_tracker)


@dataclasses.dataclass
class Loaded:
    """A whole checkpoint: full weights, model config, and what else the shards held."""

    full: dict
    cfg: ModelConfig
    iteration: int
    args: dict
    tp: int
    pp: int
    shards: dict  # (tp_rank, pp_rank) -> the raw shard dict (optimizer, scheduler, ...)


def tp_info(tp: int, rank: int) -> Optional[GroupInfo]:
    """A GroupInfo with sizes only (no process group): enough to build a stage offline."""
    return None if tp == 1 else GroupInfo(None, tp, rank, tuple(range(tp)))


def meta_stage(cfg: ModelConfig, tp: int, tp_rank: int, start: int, end: int, pre: bool, post: bool) -> GPTStage:
    """A GPTStage without storage, to learn names, shapes and tp partitions."""
    with torch.device("meta"):
        return GPTStage(cfg, tp_info(tp, tp_rank), start, end, pre, post)


def model_shapes(cfg: ModelConfig) -> dict:
    """Full name -> full shape (vocabulary unpadded) of the whole model."""
    stage = meta_stage(cfg, 1, 0, 0, cfg.num_layers, True, True)
    shapes = {n: list(p.shape) for n, p in stage.named_parameters()}
    for name in VOCAB_PARAMS:
        if name in shapes:
            shapes[name][0] = cfg.vocab_size
    return shapes


def unshard(shards: list, partition) -> torch.Tensor:
    """Inverse of megaclap.model.init.shard: rejoin tp shards along (dim, stride)."""
    if partition is None or len(shards) == 1:
        return shards[0]
    dim, stride = partition
    blocks = [s.chunk(stride, dim=dim) for s in shards]
    return torch.cat([torch.cat([b[i] for b in blocks], dim=dim) for i in range(stride)], dim=dim)


def shard_state(full: dict, cfg: ModelConfig, tp: int, tp_rank: int, start: int, end: int,
                pre: bool, post: bool) -> dict:
    """One stage's state dict (local names) for tp rank tp_rank, vocabulary padded for tp."""
    stage = meta_stage(cfg, tp, tp_rank, start, end, pre, post)
    padded = cfg.padded_vocab_size(tp)
    out = {}
    for name, p in stage.named_parameters():
        gname = stage.global_name(name)
        t = full[gname]
        if gname in VOCAB_PARAMS:
            t = pad_vocab(t, padded, gname)
        local = shard(t, getattr(p, "tp_partition", None), tp, tp_rank)
        if tuple(local.shape) != tuple(p.shape):
            raise ConversionError(f"{gname}: shard for tp rank {tp_rank} has shape {tuple(local.shape)}, "
                                  f"expected {tuple(p.shape)}")
        out[name] = local.clone()  # a view would save its whole storage
    return out


def check_full(full: dict, cfg: ModelConfig) -> None:
    """Every parameter present with its full shape, nothing extra."""
    shapes = model_shapes(cfg)
    missing, unexpected = sorted(set(shapes) - set(full)), sorted(set(full) - set(shapes))
    if missing or unexpected:
        raise ConversionError(f"state dict does not match the model config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, shape in shapes.items():
        if list(full[name].shape) != shape:
            raise ConversionError(f"{name} has shape {tuple(full[name].shape)}, expected {tuple(shape)}")


# --- reading ------------------------------------------------------------------------------------
_shard_path = fmt.shard_path
_load_shard = fmt.load_file


def locate(root: str) -> tuple[int, str]:
    """(iteration, path of the tp 0 / pp 0 shard) of the tracked checkpoint in root. Read-only:
    every rank of a multi-rank tool may call it (load_checkpoint, single-process, repairs)."""
    if not os.path.isdir(root):
        raise CheckpointError(f"{root}: no such checkpoint directory")
    it = read_tracker(root)
    if it is None:
        raise CheckpointError(f"{root} has no {TRACKER}: expected a megaclap checkpoint directory "
                              "(<dir>/latest_checkpointed_iteration.txt and <dir>/iter_XXXXXXX/)")
    for pp in (1, 2):  # mp_rank_00 (pp = 1) or mp_rank_00_000 (pp > 1)
        path = _shard_path(root, it, 0, 0, pp)
        if os.path.isfile(path):
            return it, path
    raise CheckpointError(f"{iter_dir(root, it)} holds no mp_rank_00[_000]/{MODEL_FILE}: the checkpoint is incomplete")


def load_checkpoint(root: str) -> Loaded:
    """Read every tp x pp shard of the tracked iteration and merge them into full tensors (one
    process: an interrupted re-save is repaired first, format.recover, and reported on stdout)."""
    if os.path.isdir(root):
        for note in fmt.recover(root):
            print(f" note: {note}", flush=True)
    it, first_path = locate(root)
    first = _load_shard(first_path)
    layout, args = first.get("layout"), first.get("args")
    if not layout or not args:
        raise CheckpointError(f"{root}: shard has no 'layout' / 'args' entries: not written by megaclap")
    tp, pp = layout["tensor_model_parallel_size"], layout["pipeline_model_parallel_size"]
    cfg = ModelConfig(**args["model"])
    shards = {(t, p): first if (t, p) == (0, 0) else _load_shard(_shard_path(root, it, t, p, pp))
              for p in range(pp) for t in range(tp)}
    full = {}
    for p in range(pp):
        start, end = shards[(0, p)]["layout"]["layers"]
        stage = meta_stage(cfg, tp, 0, start, end, p == 0, p == pp - 1)
        for name, param in stage.named_parameters():
            if stage.is_tied_copy(name):
                continue  # the last stage's copy of the tied embedding
            missing = [t for t in range(tp) if name not in shards[(t, p)]["model"]]
            if missing:
                raise CheckpointError(f"{root}: shard tp={missing[0]} pp={p} has no {name}; "
                                      "the checkpoint does not match its recorded model args")
            parts = [shards[(t, p)]["model"][name] for t in range(tp)]
            full[stage.global_name(name)] = unshard(parts, getattr(param, "tp_partition", None))
    for name in VOCAB_PARAMS:
        if name in full:
            full[name] = unpad_vocab(full[name], cfg.vocab_size, name)
    check_full(full, cfg)
    return Loaded(full, cfg, it, args, tp, pp, shards)


# --- writing ------------------------------------------------------------------------------------
def check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    """The target layout must split heads, query groups, MLP width and layers evenly."""
    for what, n in (("attention heads", cfg.num_attention_heads), ("query groups", cfg.query_groups),
                    ("ffn hidden size", cfg.ffn)):
        if tp < 1 or n % tp:
            raise ConversionError(f"--target-tensor-parallel-size {tp} does not divide the {n} {what}")
    if pp < 1:
        raise ConversionError(f"--target-pipeline-parallel-size {pp} must be >= 1")
    layer_ranges(cfg.num_layers, pp)  # ConfigError naming the flag when layers do not split


def make_args(cfg: ModelConfig, tp: int, pp: int, base: Optional[dict] = None) -> dict:
    """dataclasses.asdict(MegaclapConfig) for the target layout (other sections from base)."""
    full = dataclasses.asdict(MegaclapConfig(model=cfg, parallel=ParallelConfig(tp, pp)))
    if base:
        full.update({k: v for k, v in base.items() if k not in ("model", "parallel")})
        parallel = dict(base.get("parallel", {}))
        parallel.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                        decoder_first_pipeline_num_layers=None, decoder_last_pipeline_num_layers=None)
        full["parallel"].update(parallel)
    return full


def save_checkpoint(root: str, full: dict, cfg: ModelConfig, tp: int, pp: int, iteration: int = 0,
                    args: Optional[dict] = None, extra: Optional[Callable] = None,
                    side_files: Optional[Callable] = None, overwrite: bool = False,
                    overwrite_flag: str = "--overwrite") -> str:
    """Write full weights as tp x pp shards (Megatron layout), atomically; returns the iter dir.

    extra(tp_rank, pp_rank, stage_state) -> dict of more entries for that shard (optimizer...);
    side_files(tp_rank, pp_rank) -> {file name: object} saved next to it (dp_rank_*.pt).
    A root whose tracker is ahead of iteration is refused unless overwrite (the error names
    overwrite_flag, the calling tool's flag).
    """
    check_full(full, cfg)
    check_layout(cfg, tp, pp)
    fmt.check_not_behind(root, iteration, overwrite, overwrite_flag)
    created = not os.path.isdir(root)
    lock = lock_dir(root, f"--save-dir {root}")  # one writer at a time (a training run holds it too)
    try:
        return _write_shards(root, full, cfg, tp, pp, iteration, args, extra, side_files, overwrite, overwrite_flag)
    finally:
        lock.release()
        if created and os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)


def _write_shards(root, full, cfg, tp, pp, iteration, args, extra, side_files, overwrite, overwrite_flag) -> str:
    """save_checkpoint's writing, under its lock: fill iter_N.tmp-<pid>, then commit."""
    ranges = layer_ranges(cfg.num_layers, pp)
    tag = str(os.getpid())
    tmp = fmt.prepare(root, iteration, tag)
    try:
        for p, (start, end) in enumerate(ranges):
            for t in range(tp):
                model = shard_state(full, cfg, tp, t, start, end, p == 0, p == pp - 1)
                state = fmt.model_shard(iteration, model, make_args(cfg, tp, pp, args),
                                        fmt.layout(tp, pp, start, end, cfg.num_layers))
                if extra is not None:
                    state.update(extra(t, p, model))
                sub = os.path.join(tmp, fmt.rank_dir(t, p, pp))
                os.makedirs(sub)
                fmt.save_file(state, os.path.join(sub, MODEL_FILE))
                for name, obj in (side_files(t, p) if side_files else {}).items():
                    fmt.save_file(obj, os.path.join(sub, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fmt.commit(root, iteration, overwrite, overwrite_flag, tag=tag)
