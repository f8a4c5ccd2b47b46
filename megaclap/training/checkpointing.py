"""Saving and resuming a training run, in the format of megaclap.checkpoint.format.

    <save>/iter_0000100/mp_rank_TT[_PPP]/model_optim_rng.pt   model, optimizer, schedule, args
    <save>/iter_0000100/mp_rank_TT[_PPP]/dp_rank_DDD.pt        per data-parallel replica: RNG
                                                                states, data cursor, Channel state
Every rank writes into iter_XXXXXXX.tmp; after a barrier rank 0 commits it (format.commit:
old copy aside, new one in, tracker, then delete), so a crash at any point leaves a
complete, tracked checkpoint.

Resume rules, as Megatron's:
- LR schedule flags that differ from the checkpoint's are refused unless
  --override-opt_param-scheduler (this run's) or --use-checkpoint-opt_param-scheduler.
- Another data-parallel size: the data cursor (global, dp-independent) comes from
  dp_rank_000.pt, RNG is reseeded and pipeline Channel references start fresh (one line
  says so). At the same dp size a missing dp_rank_DDD.pt is an error.
- --save into a directory whose tracker is ahead of this run is refused unless
  --overwrite-checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from typing import Optional

import numpy as np
import torch

from megaclap.checkpoint import format as fmt
from megaclap.parallel.collectives import barrier
from megaclap.checkpoint.format import (RESHARD_HINT, TRACKER, CheckpointError, iter_dir,  # noqa: F401
                                        rank_dir, read_tracker, write_tracker)
from megaclap.checkpoint.megatron_files import refuse_megatron_checkpoint
from megaclap.training import resume_checks
from megaclap.training.startup import checkpoint_line

# LRScheduler.state_dict keys (Megatron's names) -> the flag that sets each
SCHEDULE_FLAGS = {"max_lr": "--lr", "min_lr": "--min-lr",
                  "lr_warmup_steps": "--lr-warmup-iters/-samples/-fraction (in samples)",
                  "lr_decay_steps": "--lr-decay-iters/-samples (in samples; default the run's length)",
                  "lr_decay_style": "--lr-decay-style"}


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


def reseed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def reconcile_schedule(saved: dict, current: dict, optim_cfg) -> dict:
    """The scheduler state to load: Megatron's check of the saved schedule against this run's flags."""
    if optim_cfg.override_opt_param_scheduler:
        return {**current, "num_steps": saved["num_steps"]}
    if optim_cfg.use_checkpoint_opt_param_scheduler:
        return saved
    diffs = [f"{flag} {current[k]} (checkpoint: {saved[k]})" for k, flag in SCHEDULE_FLAGS.items()
             if k in saved and k in current and saved[k] != current[k]]
    if diffs:
        raise CheckpointError(f"the LR schedule differs from the checkpoint's: {'; '.join(diffs)}; pass "
                              "--override-opt_param-scheduler to use this run's flags or "
                              "--use-checkpoint-opt_param-scheduler to keep the checkpoint's")
    return saved


def _layout(trainer) -> dict:
    ps, stage = trainer.ps, trainer.stage
    return fmt.layout(ps.tp_size, ps.pp_size, stage.start, stage.end, trainer.cfg.model.num_layers, ps.dp_size)


class Checkpointer:
    """--save / --save-interval / --load / --finetune / --no-load-optim / --no-load-rng / --exit-interval
    / --overwrite-checkpoint."""

    def __init__(self, cfg, pstate, print_fn=None):
        self.cfg, self.ps = cfg, pstate
        self.print = print_fn or (lambda s: print(s, flush=True))
        self.last_saved: Optional[int] = None
        self.tag = ""  # the job's tag in temporary names (iter_N.tmp-<tag>), set by the entry point

    # --- save -------------------------------------------------------------------------------
    def save(self, trainer) -> str:
        trainer.check_finite()  # never save over the last good checkpoint after a NaN/inf step
        root, ps, it = self.cfg.train.save, self.ps, trainer.iteration
        overwrite = self.cfg.train.overwrite_checkpoint
        started = time.perf_counter()
        tmp = fmt.tmp_dir(root, it, self.tag)
        if ps.rank == 0:
            fmt.check_not_behind(root, it, overwrite, "--overwrite-checkpoint")
            fmt.prepare(root, it, self.tag)
        barrier(self.ps)
        sub = os.path.join(tmp, rank_dir(ps.tp_rank, ps.pp_rank, ps.pp_size))
        os.makedirs(sub, exist_ok=True)
        if ps.dp_rank == 0:
            fmt.save_file(self._model_state(trainer), os.path.join(sub, fmt.MODEL_FILE))
        fmt.save_file(self._replica_state(trainer), os.path.join(sub, fmt.replica_file(ps.dp_rank)))
        barrier(self.ps)
        if ps.rank == 0:
            fmt.commit(root, it, overwrite, "--overwrite-checkpoint", tag=self.tag)
        barrier(self.ps)
        self.last_saved = it
        if ps.rank == 0:
            self.print(checkpoint_line("saved", root, it, time.perf_counter() - started,
                                       f"{ps.tp_size * ps.pp_size} model shards, {ps.dp_size} data-parallel cursors"))
        return iter_dir(root, it)

    def _model_state(self, trainer) -> dict:
        return fmt.model_shard(
            trainer.iteration, trainer.stage.state_dict(), dataclasses.asdict(self.cfg), _layout(trainer),
            consumed_samples=trainer.consumed_samples, optimizer=trainer.optimizer.state_dict(),
            opt_param_scheduler=trainer.scheduler.state_dict(), loss_scaler=trainer.scaler.state_dict(),
            rng_state=rng_state(), counters={"skipped": trainer.skipped, "nans": trainer.nans})

    def _replica_state(self, trainer) -> dict:
        sources = {k: getattr(trainer.data, k) for k in ("train", "valid", "test")}
        return {"rng_state": rng_state(), "data": {k: s.state_dict() for k, s in sources.items() if s is not None},
                "channels": trainer.p2p.state_dict() if trainer.p2p is not None else None}

    # --- load -------------------------------------------------------------------------------
    def load(self, trainer) -> Optional[int]:
        """Resume from --load (latest tracked iteration; a missing tracker starts fresh), then
        check that --save would not move another run's tracker back."""
        it = self._load(trainer)
        t = self.cfg.train
        if t.save:
            fmt.check_not_behind(t.save, trainer.iteration, t.overwrite_checkpoint, "--overwrite-checkpoint")
            if it is not None and os.path.realpath(t.save) == os.path.realpath(t.load) and it == trainer.iteration:
                self.last_saved = it  # already on disk: no re-save when nothing is trained
        return it

    def _load(self, trainer) -> Optional[int]:
        root = self.cfg.train.load
        if not root:
            return None
        if os.path.exists(root) and not os.path.isdir(root):
            raise CheckpointError(f"--load {root} is a file: --load takes the checkpoint directory (the one holding "
                                  f"{TRACKER} and iter_XXXXXXX/)")
        if self.ps.rank == 0:
            for note in fmt.recover(root):
                self.print(f" note: {note}")
        barrier(self.ps)
        refuse_megatron_checkpoint(root)   # Megatron-LM's own checkpoint: one line naming the converter
        it = read_tracker(root)
        if it is None:
            if self.ps.rank == 0:
                self.print(f" no checkpoint tracker in {root}: training from scratch")
            return None
        sub = os.path.join(iter_dir(root, it), rank_dir(self.ps.tp_rank, self.ps.pp_rank, self.ps.pp_size))
        path = os.path.join(sub, fmt.MODEL_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(self._missing_shard(root, it, path))
        state = fmt.load_file(path, self.ps.device)
        self._check_layout(state, path)
        saved_args = state.get("args") or {}
        resume_checks.check_model(saved_args, self.cfg, self.ps.tp_size, root)
        resume_checks.check_split(saved_args, self.cfg, root)
        trainer.stage.load_state_dict(state["model"])
        if self.cfg.train.finetune:
            return self._report(0, root)
        self._restore_training(trainer, state, sub)
        return self._report(it, root)

    def _missing_shard(self, root: str, it: int, path: str) -> str:
        ps, saved = self.ps, fmt.saved_layout(iter_dir(root, it))
        if saved is not None and saved != (ps.tp_size, ps.pp_size):
            return (f"{path} is missing: the checkpoint was saved with tp={saved[0]} pp={saved[1]}, this run has "
                    f"tp={ps.tp_size} pp={ps.pp_size}; " + RESHARD_HINT)
        return (f"{path} is missing: iteration {it} of {root} is incomplete (same layout, tp={ps.tp_size} "
                f"pp={ps.pp_size}); restore the file, or point {TRACKER} at an earlier complete iteration")

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
                self.print(f" checkpoint at iteration {trainer.iteration} has no optimizer state (converted?): "
                           "the optimizer starts fresh")
            trainer.scheduler.load_state_dict({"num_steps": trainer.consumed_samples})
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(reconcile_schedule(
                state["opt_param_scheduler"], trainer.scheduler.state_dict(), self.cfg.optim))
            trainer.scaler.load_state_dict(state["loss_scaler"])
        self._restore_replica(trainer, state, sub)

    def _saved_dp(self, state: dict, sub: str) -> Optional[int]:
        dp = state.get("layout", {}).get("data_parallel_size")
        if dp is None:  # written before the layout recorded it, or by a tool: count the replica files
            dp = len([n for n in os.listdir(sub) if n.startswith("dp_rank_") and n.endswith(".pt")]) or None
        return dp

    def _restore_replica(self, trainer, state: dict, sub: str) -> None:
        """Data cursor, RNG and Channel state from dp_rank_DDD.pt (see the module docstring)."""
        ps, t = self.ps, self.cfg.train
        saved_dp = self._saved_dp(state, sub)
        if saved_dp is None:
            if ps.rank == 0:
                self.print(f" {sub} has no dp_rank_*.pt (converted weights?): data, RNG and Channel state start fresh")
            return
        same = saved_dp == ps.dp_size
        replica = fmt.load_file(os.path.join(sub, fmt.replica_file(ps.dp_rank if same else 0)), ps.device,
                                "per-replica state (data cursor, RNG, Channel references)")
        for key, sd in replica["data"].items():
            source = getattr(trainer.data, key)
            if source is not None and sd is not None:  # None: --full-validation's source, no cursor
                source.load_state_dict(sd)
        if same:
            note = resume_checks.channel_state_note(state.get("args") or {}, self.cfg)
            if replica["channels"] is not None and trainer.p2p is not None and note is None:
                trainer.p2p.load_state_dict(replica["channels"])
            elif note is not None and ps.rank == 0:
                self.print(f" note: {note}")
            if not t.no_load_rng:
                set_rng_state(replica["rng_state"])
            return
        reseed(t.seed + 100 * ps.pp_rank + trainer.iteration)
        if ps.rank == 0:
            self.print(f" data-parallel size changed from {saved_dp} to {ps.dp_size}: data position from the global "
                       f"consumed-samples count ({trainer.data.train.consumed_samples}), RNG reseeded, "
                       "pipeline Channel references reset")

    def _report(self, it: int, root: str) -> int:
        return it  # megaclap.training.pretrain prints the 'successfully loaded' line

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
