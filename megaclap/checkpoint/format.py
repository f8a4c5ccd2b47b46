"""The one home of megaclap's checkpoint format, shared by training and the offline tools.

    <root>/latest_checkpointed_iteration.txt                   the tracker, written last
    <root>/iter_0000100/mp_rank_TT[_PPP]/model_optim_rng.pt    one shard per (tp, pp) rank
    <root>/iter_0000100/mp_rank_TT[_PPP]/dp_rank_DDD.pt        per data-parallel replica

A save fills iter_XXXXXXX.tmp and then `commit`s it:

    1. refuse when the tracker is ahead of the iteration written (unless overwrite)
    2. an existing iter_XXXXXXX is renamed aside to iter_XXXXXXX.old (never deleted first)
    3. iter_XXXXXXX.tmp is renamed to iter_XXXXXXX
    4. the tracker is rewritten (tmp file + rename)
    5. the aside copy is deleted

A crash at any point leaves a complete checkpoint that `recover` finds: between 2 and 3 the
aside copy is renamed back; after 3 the aside copy is stale and removed. The temporary name
carries the writer's tag (iter_XXXXXXX.tmp-<tag>: training's job, a tool's pid), so two writers
never fill one directory; the writer also holds the root's lock (megaclap.locks) and clears
unfinished saves of dead writers (`clear_unfinished`). The optimizer's
parameter-group order lives here too (`optimizer_group_names`): the optimizer is built from
it and the resharding tool renumbers Adam state by it, so the two cannot disagree.
This module imports neither the training loop nor torch.distributed.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterable, Optional

import torch

from megaclap.errors import UserError

TRACKER = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0
TMP_SUFFIX, ASIDE_SUFFIX = ".tmp", ".old"
RESHARD_HINT = ("convert it with tools/checkpoint/reshard.py --target-tensor-parallel-size T "
                "--target-pipeline-parallel-size P")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint directory is missing, incomplete, unreadable or would be overwritten."""


# --- names --------------------------------------------------------------------------------------
def iter_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_dir(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def replica_file(dp_rank: int) -> str:
    return f"dp_rank_{dp_rank:03d}.pt"


def shard_path(root: str, iteration: int, tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return os.path.join(iter_dir(root, iteration), rank_dir(tp_rank, pp_rank, pp_size), MODEL_FILE)


def saved_layout(it_dir: str) -> Optional[tuple]:
    """(tp, pp) an iteration directory was saved with, read off its mp_rank_* names; None if none."""
    names = [n.split("_")[2:] for n in (os.listdir(it_dir) if os.path.isdir(it_dir) else [])
             if n.startswith("mp_rank_")]
    try:
        tps = [int(parts[0]) for parts in names]
        pps = [int(parts[1]) if len(parts) > 1 else 0 for parts in names]
    except (ValueError, IndexError):
        return None
    return (max(tps) + 1, max(pps) + 1) if names else None


# --- shard schema -------------------------------------------------------------------------------
def layout(tp: int, pp: int, start: int, end: int, num_layers: int, dp: Optional[int] = None) -> dict:
    """The 'layout' entry of a shard: the parallel sizes and this stage's layer range."""
    out = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
           "layers": [start, end], "num_layers": num_layers}
    if dp is not None:
        out["data_parallel_size"] = dp
    return out


def model_shard(iteration: int, model: dict, args: dict, shard_layout: dict, **extra) -> dict:
    """One model_optim_rng.pt. Training adds optimizer, opt_param_scheduler, loss_scaler,
    rng_state and consumed_samples; converted checkpoints carry weights only."""
    state = {"iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION, "model": model,
             "args": args, "layout": shard_layout, "counters": {"skipped": 0, "nans": 0}}
    state.update(extra)
    return state


DECOUPLED_PARAMS = ("embedding.word_embeddings.weight", "output_layer.weight")
"""Parameters --decoupled-lr applies to: word embedding and output layer (as Megatron)."""


def optimizer_groups(named_parameters: Iterable, decoupled: bool = False) -> list[tuple[bool, bool, list[str]]]:
    """(no_decay, decoupled, parameter names) per optimizer group, in the optimizer's order:
    matrices (weight decay), then vectors (biases and norm weights: no weight decay, as
    Megatron); with --decoupled-lr the DECOUPLED_PARAMS of each kind follow in their own group."""
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    groups = []
    for no_decay in (False, True):
        kind = [n for n, p in named if (p.ndim < 2) == no_decay]
        if not decoupled:
            groups.append((no_decay, False, kind))
            continue
        for dec in (False, True):
            names = [n for n in kind if (n in DECOUPLED_PARAMS) == dec]
            if names or not dec:
                groups.append((no_decay, dec, names))
    return groups


def optimizer_group_names(named_parameters: Iterable, decoupled: bool = False) -> list[list[str]]:
    """Parameter names per optimizer group, in order (see optimizer_groups)."""
    return [names for _, _, names in optimizer_groups(named_parameters, decoupled)]


# --- reading ------------------------------------------------------------------------------------
def read_tracker(root: str) -> Optional[int]:
    """The tracked iteration in root, None without a tracker; CheckpointError if it names no directory."""
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} holds {text!r}, expected an iteration number")
    it = int(text)
    final = iter_dir(root, it)
    if not os.path.isdir(final):
        extra = ""
        if os.path.isdir(final + ASIDE_SUFFIX):
            extra = f" ({final + ASIDE_SUFFIX} holds it: an interrupted re-save; loading recovers it)"
        raise CheckpointError(f"{path} points at iteration {it} but {final} is missing{extra}; "
                              "fix the tracker to a saved iteration or remove it to start fresh")
    return it


def recover(root: str) -> list[str]:
    """Finish or undo an interrupted commit in root; returns one note per repair.

    Call on one process only (rank 0, before a barrier). Leftover .tmp directories are an
    uncommitted save: they are reported and left for the next save to clear."""
    notes = []
    if not os.path.isdir(root):
        return notes
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith("iter_") and name.endswith(ASIDE_SUFFIX):
            final = path[:-len(ASIDE_SUFFIX)]
            if os.path.isdir(final):  # crash after the new copy went in: the aside one is stale
                shutil.rmtree(path)
                notes.append(f"removed {path}, left over from an interrupted re-save ({final} is complete)")
            else:  # crash between the two renames: put the complete old copy back
                os.replace(path, final)
                notes.append(f"restored {final} from {path} (a re-save of it was interrupted)")
        elif name.startswith("iter_") and TMP_SUFFIX in name:
            notes.append(f"ignoring {path}: an unfinished save (never tracked); the next run saving here removes it")
    return notes


def clear_unfinished(root: str) -> list[str]:
    """Remove iter_*.tmp* directories in root (unfinished saves); only for the holder of root's
    lock, which no live writer of them can hold. Returns one note per directory removed."""
    notes = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if name.startswith("iter_") and TMP_SUFFIX in name and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"removed {path}: an unfinished save of an earlier run")
    return notes


def load_file(path: str, map_location="cpu", what: str = "checkpoint shard") -> dict:
    """torch.load with a one-line CheckpointError for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"{path}: cannot read this {what} ({type(e).__name__}: {e}); the file is corrupt "
                              "or truncated: point the tracker at an earlier iteration, or start fresh") from e


# --- writing ------------------------------------------------------------------------------------
def check_not_behind(root: str, iteration: int, overwrite: bool, flag: str) -> None:
    """Refuse to write iteration into root when root's tracker is ahead (another run's checkpoints)."""
    path = os.path.join(root, TRACKER)
    if overwrite or not os.path.isfile(path):
        return
    text = open(path).read().strip()
    if text.isdigit() and int(text) > iteration:
        raise CheckpointError(f"{root} already holds iteration {int(text)} (its {TRACKER}); writing iteration "
                              f"{iteration} there would move the tracker back: save into a fresh directory, "
                              f"or pass {flag} to overwrite")


def tmp_dir(root: str, iteration: int, tag: str = "") -> str:
    """The temporary directory a writer tagged `tag` fills before commit."""
    return iter_dir(root, iteration) + TMP_SUFFIX + (f"-{tag}" if tag else "")


def prepare(root: str, iteration: int, tag: str = "") -> str:
    """An empty iter_XXXXXXX.tmp[-tag] to fill; returns its path."""
    tmp = tmp_dir(root, iteration, tag)
    os.makedirs(root, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def _free_space(path: str) -> str:
    try:
        return f"{shutil.disk_usage(os.path.dirname(path)).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def save_file(obj, path: str) -> None:
    """torch.save with a one-line CheckpointError for OSError (disk full, permissions) and for the
    RuntimeError torch's zip writer raises on a full disk ('unexpected pos 576 vs 534')."""
    try:
        torch.save(obj, path)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else \
            f"torch's writer failed, usually a full disk ({str(e).strip().splitlines()[0]})"
        raise CheckpointError(f"cannot write {path}: {reason} ({_free_space(path)}); free space there or point "
                              "--save at another directory (the previous checkpoint is intact)") from e


def _rename(src: str, dst: str) -> None:
    os.replace(src, dst)


def write_tracker(root: str, iteration: int) -> None:
    """Point the tracker at iteration (tmp file + rename), after the iteration's rename."""
    tmp = os.path.join(root, f"{TRACKER}{TMP_SUFFIX}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, TRACKER))


def commit(root: str, iteration: int, overwrite: bool = False, flag: str = "--overwrite", tag: str = "") -> str:
    """Move the filled iter_XXXXXXX.tmp[-tag] into place crash-safely and update the tracker."""
    check_not_behind(root, iteration, overwrite, flag)
    final = iter_dir(root, iteration)
    tmp, aside = tmp_dir(root, iteration, tag), final + ASIDE_SUFFIX
    if os.path.isdir(final):
        shutil.rmtree(aside, ignore_errors=True)
        _rename(final, aside)
    _rename(tmp, final)
    write_tracker(root, iteration)
    shutil.rmtree(aside, ignore_errors=True)
    return final
