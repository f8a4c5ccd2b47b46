"""Checkpoints in Megatron's torch layout, written atomically, resumed exactly.

    <save>/latest_checkpointed_iteration.txt          written last (tmp file + rename)
    <save>/iter_0000100/mp_rank_TT[_PPP]/model_optim_rng.pt   model, optimizer, schedule, args
    <save>/iter_0000100/mp_rank_TT[_PPP]/dp_rank_DDD.pt        per data-parallel replica: RNG
                                                                states, data cursor, Channel state
Every rank writes into iter_XXXXXXX.tmp; after a barrier rank 0 renames it and then updates
the tracker, so a crash mid-save leaves the previous checkpoint (and the tracker) intact.
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megaclap.training.startup import checkpoint_line

TRACKER = "latest_checkpointed_iteration.txt"
RESHARD_HINT = "convert it with tools/checkpoint/reshard.py --target-tensor-parallel-size T --target-pipeline-parallel-size P"


class CheckpointError(RuntimeError):
    pass


def iter_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def rank_dir(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def read_tracker(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} holds {text!r}, expected an iteration number")
    it = int(text)
    if not os.path.isdir(iter_dir(root, it)):
        raise CheckpointError(f"{path} points at iteration {it} but {iter_dir(root, it)} is missing; "
                              "fix the tracker to a saved iteration or remove it to start fresh")
    return it


def write_tracker(root: str, iteration: int) -> None:
    """Point the tracker at iteration (atomically: tmp file + rename). Call after the rename
    of the iteration directory, so the tracker never names a partial checkpoint."""
    tmp = os.path.join(root, TRACKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
    os.replace(tmp, os.path.join(root, TRACKER))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout(trainer) -> dict:
    ps, stage = trainer.ps, trainer.stage
    return {"tensor_model_parallel_size": ps.tp_size, "pipeline_model_parallel_size": ps.pp_size,
            "layers": [stage.start, stage.end], "num_layers": trainer.cfg.model.num_layers}


class Checkpointer:
    """--save / --save-interval / --load / --finetune / --no-load-optim / --no-load-rng / --exit-interval."""

    def __init__(self, cfg, pstate):
        self.cfg, self.ps = cfg, pstate
        self.last_saved: Optional[int] = None

    # --- save -------------------------------------------------------------------------------
    def save(self, trainer) -> str:
        root, ps, it = self.cfg.train.save, self.ps, trainer.iteration
        started = time.perf_counter()
        final, tmp = iter_dir(root, it), iter_dir(root, it) + ".tmp"
        if ps.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        _barrier()
        sub = os.path.join(tmp, rank_dir(ps.tp_rank, ps.pp_rank, ps.pp_size))
        os.makedirs(sub, exist_ok=True)
        if ps.dp_rank == 0:
            torch.save(self._model_state(trainer), os.path.join(sub, "model_optim_rng.pt"))
        torch.save(self._replica_state(trainer), os.path.join(sub, f"dp_rank_{ps.dp_rank:03d}.pt"))
        _barrier()
        if ps.rank == 0:
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_tracker(root, it)
        _barrier()
        self.last_saved = it
        if ps.rank == 0:
            trainer.print(checkpoint_line("saved", root, it, time.perf_counter() - started,
                                          f"{ps.tp_size * ps.pp_size} model shards, {ps.dp_size} data-parallel cursors"))
        return final

    def _model_state(self, trainer) -> dict:
        return {"iteration": trainer.iteration, "checkpoint_version": 3.0,
                "consumed_samples": trainer.consumed_samples, "model": trainer.stage.state_dict(),
                "optimizer": trainer.optimizer.state_dict(), "opt_param_scheduler": trainer.scheduler.state_dict(),
                "loss_scaler": trainer.scaler.state_dict(), "rng_state": rng_state(),
                "args": dataclasses.asdict(self.cfg), "layout": _layout(trainer),
                "counters": {"skipped": trainer.skipped, "nans": trainer.nans}}

    def _replica_state(self, trainer) -> dict:
        sources = {k: getattr(trainer.data, k) for k in ("train", "valid", "test")}
        return {"rng_state": rng_state(), "data": {k: s.state_dict() for k, s in sources.items() if s is not None},
                "channels": trainer.p2p.state_dict() if trainer.p2p is not None else None}

    # --- load -------------------------------------------------------------------------------
    def load(self, trainer) -> Optional[int]:
        """Resume from --load (latest tracked iteration); a missing tracker starts fresh."""
        root = self.cfg.train.load
        if not root:
            return None
        it = read_tracker(root)
        if it is None:
            if self.ps.rank == 0:
                print(f" no checkpoint tracker in {root}: training from scratch", flush=True)
            return None
        sub = os.path.join(iter_dir(root, it), rank_dir(self.ps.tp_rank, self.ps.pp_rank, self.ps.pp_size))
        path = os.path.join(sub, "model_optim_rng.pt")
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing: the checkpoint was saved with another parallel layout; "
                                  + RESHARD_HINT)
        state = torch.load(path, map_location=self.ps.device, weights_only=False)
        self._check_layout(state, path)
        trainer.stage.load_state_dict(state["model"])
        if self.cfg.train.finetune:
            return self._report(0, root)
        self._restore_training(trainer, state, sub)
        return self._report(it, root)

    def _check_layout(self, state: dict, path: str) -> None:
        saved = state.get("layout", {})
        ps = self.ps
        if (saved.get("tensor_model_parallel_size"), saved.get("pipeline_model_parallel_size")) != (ps.tp_size, ps.pp_size):
            raise CheckpointError(
                f"{path} was saved with tp={saved.get('tensor_model_parallel_size')} "
                f"pp={saved.get('pipeline_model_parallel_size')}, this run has tp={ps.tp_size} pp={ps.pp_size}; "
                + RESHARD_HINT)

    def _restore_training(self, trainer, state: dict, sub: str) -> None:
        t = self.cfg.train
        trainer.iteration = state["iteration"]
        trainer.consumed_samples = state.get("consumed_samples", trainer.iteration * self.cfg.train.global_batch_size)
        counters = state.get("counters", {})
        trainer.skipped, trainer.nans = counters.get("skipped", 0), counters.get("nans", 0)
        if t.no_load_optim or "optimizer" not in state:
            if not t.no_load_optim and self.ps.rank == 0:
                print(f" checkpoint at iteration {trainer.iteration} has no optimizer state (converted?): "
                      "the optimizer starts fresh", flush=True)
            trainer.scheduler.load_state_dict({"num_steps": trainer.consumed_samples})
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["opt_param_scheduler"])
            trainer.scaler.load_state_dict(state["loss_scaler"])
        replica_path = os.path.join(sub, f"dp_rank_{self.ps.dp_rank:03d}.pt")
        replica = torch.load(replica_path, map_location=self.ps.device, weights_only=False) \
            if os.path.isfile(replica_path) else None
        if replica is not None:
            for key, sd in replica["data"].items():
                getattr(trainer.data, key).load_state_dict(sd)
            if replica["channels"] is not None and trainer.p2p is not None:
                trainer.p2p.load_state_dict(replica["channels"])
            if not t.no_load_rng:
                set_rng_state(replica["rng_state"])

    def _report(self, it: int, root: str) -> int:
        if self.ps.rank == 0:
            print(f" loaded checkpoint from {root} at iteration {it}", flush=True)
        return it

    # --- hooks from the training loop -------------------------------------------------------
    def after_step(self, trainer) -> bool:
        """Save on --save-interval; return True to stop on --exit-interval (after saving)."""
        t, it = self.cfg.train, trainer.iteration
        exiting = bool(t.exit_interval) and it % t.exit_interval == 0
        if t.save and ((t.save_interval and it % t.save_interval == 0) or exiting):
            self.save(trainer)
        return exiting

    def finish(self, trainer) -> None:
        if self.cfg.train.save and self.last_saved != trainer.iteration and trainer.iteration > 0:
            self.save(trainer)
