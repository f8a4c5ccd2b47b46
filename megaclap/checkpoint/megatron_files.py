"""Megatron-LM's checkpoint directories, read without Megatron installed: the tracker, the two
formats, pickles that hold Megatron classes, and the one line `--load` gives for them.

    <root>/latest_checkpointed_iteration.txt      an iteration number, or "release"
    <root>/iter_0000100/ (or <root>/release/)
        torch:       mp_rank_TT[_PPP]/model_optim_rng.pt, one pickle per model-parallel rank
        torch_dist:  .metadata + __<rank>_<n>.distcp (torch.distributed.checkpoint), metadata.json
                     ({"sharded_backend": "torch_dist", ...}); the run's args either inside the
                     checkpoint (the bytes entry `common_state/shard_0_1`, current Megatron) or
                     in common.pt (older Megatron)

The args Namespace may hold Megatron classes (enums); they are unpickled as inert stubs.
This module imports nothing of the training loop, so `--load` can ask it cheaply.
"""
from __future__ import annotations

import os
import pickle
import types
from typing import Optional

import torch

from megaclap.checkpoint.format import CheckpointError
from megaclap.checkpoint.keymaps import ConversionError

TRACKER = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
DIST_FILES = (".metadata", "metadata.json", "common.pt")
CONVERT = "tools/checkpoint/convert.py --loader megatron --saver megaclap"


# --- pickles holding Megatron classes ----------------------------------------------------------
class _Stub:
    """Stands in for an object of a class that cannot be imported here (never used)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if module.split(".")[0] in ("megatron", "transformer_engine", "apex", "modelopt"):
                return type(name, (_Stub,), {"__module__": module})
            raise


PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load,
                               __name__="megaclap_megatron_pickle")


def load_pickle(source, **kwargs) -> dict:
    """torch.load of a Megatron file or buffer, Megatron classes as stubs, on CPU."""
    if isinstance(source, str) and not os.path.isfile(source):
        raise ConversionError(f"{source} is missing: the Megatron checkpoint is incomplete")
    try:
        return torch.load(source, map_location="cpu", weights_only=False, pickle_module=PICKLE,
                          **kwargs)
    except Exception as e:  # truncated zip, pickle garbage
        where = source if isinstance(source, str) else "a Megatron checkpoint buffer"
        raise ConversionError(f"{where}: cannot read this Megatron checkpoint shard "
                              f"({type(e).__name__}: {e}); the file is truncated or corrupt") from e


# --- directories ---------------------------------------------------------------------------------
def locate(root: str) -> tuple[int, str]:
    """(iteration, directory) named by the tracker; release checkpoints are iteration 0."""
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        raise ConversionError(f"--load-dir {root}: no {TRACKER}; expected a Megatron-LM checkpoint "
                              "directory")
    text = open(tracker).read().strip()
    if text == "release":
        return 0, os.path.join(root, "release")
    if not text.isdigit():
        raise ConversionError(f"{tracker} holds {text!r}, expected an iteration number or "
                              "'release'")
    return int(text), os.path.join(root, f"iter_{int(text):07d}")


def shard_path(it_dir: str, t: int, p: int, pp: int) -> str:
    name = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
    return os.path.join(it_dir, name, MODEL_FILE)


def checkpoint_format(it_dir: str) -> Optional[str]:
    """"torch_dist", "torch" (legacy: mp_rank_00[_000]/), or None when it holds neither."""
    if any(os.path.isfile(os.path.join(it_dir, f)) for f in DIST_FILES[:2]):
        return "torch_dist"
    if any(os.path.isdir(os.path.join(it_dir, d)) for d in ("mp_rank_00", "mp_rank_00_000")):
        return "torch"
    return None


def _is_megatron_legacy(it_dir: str) -> bool:
    """Whether rank 0's model_optim_rng.pt is Megatron's own: megaclap's always has a 'layout'
    entry (and a trained one dp_rank_*.pt files beside it, which settles it without reading)."""
    sub = next((os.path.join(it_dir, d) for d in ("mp_rank_00", "mp_rank_00_000")
                if os.path.isdir(os.path.join(it_dir, d))), None)
    if sub is None or any(n.startswith("dp_rank_") for n in os.listdir(sub)):
        return False
    try:
        state = load_pickle(os.path.join(sub, MODEL_FILE), mmap=True)
    except Exception:   # unreadable: megaclap's own load reports it
        return False
    return isinstance(state, dict) and "layout" not in state and "args" in state and not isinstance(
        state["args"], dict)


def refuse_megatron_checkpoint(root: str) -> None:
    """CheckpointError (one line naming the converter) when --load's tracked checkpoint is
    Megatron-LM's own, of either format; nothing otherwise."""
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        return
    text = open(tracker).read().strip()
    name = "release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else ""
    it_dir = os.path.join(root, name)
    kind = checkpoint_format(it_dir) if os.path.isdir(it_dir) else None
    if kind == "torch_dist" or (kind == "torch" and _is_megatron_legacy(it_dir)):
        fmt = "torch_dist" if kind == "torch_dist" else "legacy torch"
        raise CheckpointError(f"--load {root} holds a Megatron-LM {fmt} checkpoint ({it_dir}); "
                              f"convert it first: python {CONVERT} --load-dir {root} --save-dir DIR, "
                              "then --load DIR --finetune")
