"""Offline resharding of a megaclap checkpoint to another tp x pp layout (CPU).

Weights are merged to full tensors and cut again (megaclap.checkpoint.io). Adam's
exp_avg / exp_avg_sq have their parameter's shape, so they are merged and cut the same
way; the optimizer's param_groups (hyper-parameters) are kept and its parameter ids
renumbered by megaclap.checkpoint.format.optimizer_group_names, the order the optimizer
is built in (matrices, then vectors).
The LR schedule, loss scale and counters are kept. Per-replica files (dp_rank_*.pt: data
cursor, RNG) are copied from the first shard with the pipeline-channel state dropped,
since stage boundaries move.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from megaclap.checkpoint import io
from megaclap.checkpoint.keymaps import VOCAB_PARAMS, pad_vocab, unpad_vocab
from megaclap.model.init import shard
from megaclap.config.parallel import layer_ranges
from megaclap.checkpoint.format import iter_dir, optimizer_group_names, rank_dir

KEPT = ("opt_param_scheduler", "loss_scaler", "counters", "checkpoint_version", "consumed_samples")


def _group_names(stage, param_groups: list) -> list[list[str]]:
    """Parameter names per optimizer group, in the optimizer's order (format.py); groups with
    their own max_lr mean the run used --decoupled-lr."""
    decoupled = any("max_lr" in g for g in param_groups)
    return optimizer_group_names(stage.named_parameters(), decoupled)


def merge_optimizer(loaded: io.Loaded) -> Optional[dict]:
    """Full name -> {state key: full tensor}; None when the shards carry no optimizer state."""
    if any("optimizer" not in s for s in loaded.shards.values()):
        return None
    cfg, tp, full = loaded.cfg, loaded.tp, {}
    for p in range(loaded.pp):
        start, end = loaded.shards[(0, p)]["layout"]["layers"]
        stage = io.meta_stage(cfg, tp, 0, start, end, p == 0, p == loaded.pp - 1)
        params = dict(stage.named_parameters())
        per_rank = [_by_name(loaded.shards[(t, p)]["optimizer"], stage) for t in range(tp)]
        for name in per_rank[0]:
            gname = stage.global_name(name)
            if stage.is_tied_copy(name) or gname in full:
                continue
            entry = {}
            for key, value in per_rank[0][name].items():
                if torch.is_tensor(value) and value.shape == params[name].shape:
                    value = io.unshard([r[name][key] for r in per_rank], getattr(params[name], "tp_partition", None))
                    if gname in VOCAB_PARAMS:
                        value = unpad_vocab(value, cfg.vocab_size, gname)
                entry[key] = value
            full[gname] = entry
    return full


def _by_name(opt_state: dict, stage) -> dict:
    names = [n for group in _group_names(stage, opt_state["param_groups"]) for n in group]
    ids = [i for g in opt_state["param_groups"] for i in g["params"]]
    return {names[k]: opt_state["state"][i] for k, i in enumerate(ids) if i in opt_state["state"]}


def shard_optimizer(full_opt: dict, template_groups: list, cfg, tp: int, tp_rank: int,
                    start: int, end: int, pre: bool, post: bool) -> dict:
    """An optimizer state_dict for one target shard."""
    stage = io.meta_stage(cfg, tp, tp_rank, start, end, pre, post)
    params = dict(stage.named_parameters())
    state, groups, idx = {}, [], 0
    for template, names in zip(template_groups, _group_names(stage, template_groups)):
        groups.append({**template, "params": list(range(idx, idx + len(names)))})
        for name in names:
            gname = stage.global_name(name)
            if gname in full_opt:
                state[idx] = {k: _cut(v, params[name], gname, cfg, tp, tp_rank) for k, v in full_opt[gname].items()}
            idx += 1
    return {"state": state, "param_groups": groups}


def _cut(value, param, gname: str, cfg, tp: int, tp_rank: int):
    if not torch.is_tensor(value) or value.ndim == 0:
        return value
    if gname in VOCAB_PARAMS:
        value = pad_vocab(value, cfg.padded_vocab_size(tp), gname)
    return shard(value, getattr(param, "tp_partition", None), tp, tp_rank).clone()


def _replica_files(root: str, loaded: io.Loaded) -> dict:
    """dp_rank_*.pt of the first shard, channel state dropped."""
    src = os.path.join(iter_dir(root, loaded.iteration), rank_dir(0, 0, loaded.pp))
    files = {}
    for name in sorted(os.listdir(src)) if os.path.isdir(src) else []:
        if name.startswith("dp_rank_") and name.endswith(".pt"):
            replica = torch.load(os.path.join(src, name), map_location="cpu", weights_only=False)
            files[name] = {**replica, "channels": None}
    return files


def reshard(load_dir: str, save_dir: str, tp: int, pp: int, keep_optimizer: bool = True,
            overwrite: bool = False) -> list[str]:
    """Rewrite load_dir's tracked checkpoint as tp x pp into save_dir; returns notes for the user."""
    loaded = io.load_checkpoint(load_dir)
    cfg, notes = loaded.cfg, []
    full_opt = merge_optimizer(loaded) if keep_optimizer else None
    first = loaded.shards[(0, 0)]
    if full_opt is None:
        notes.append("optimizer state not written (absent or --no-optimizer): resume with --no-load-optim or --finetune")
    replicas = _replica_files(load_dir, loaded)
    if replicas:
        notes.append("data cursor and RNG copied from the first shard; pipeline-channel (compression) state dropped")
    ranges = layer_ranges(cfg.num_layers, pp)

    def extra(t: int, p: int, model: dict) -> dict:
        out = {k: first[k] for k in KEPT if k in first}
        if full_opt is not None:
            start, end = ranges[p]
            out["optimizer"] = shard_optimizer(full_opt, [
                {k: v for k, v in g.items() if k != "params"} for g in first["optimizer"]["param_groups"]],
                cfg, tp, t, start, end, p == 0, p == pp - 1)
        return out

    io.save_checkpoint(save_dir, loaded.full, cfg, tp, pp, loaded.iteration, loaded.args, extra,
                       side_files=lambda t, p: replicas, overwrite=overwrite)
    return notes
