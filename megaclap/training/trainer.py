"""The training loop, top to bottom: build, then step / log / evaluate / save until done.

One Trainer per rank. Each rank builds only its pipeline stage; only the first and last
stages read token data, every stage reads the sample ids and the step's `fresh` flag.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Optional

import torch
import torch.distributed as dist

from megaclap.config.batch_schedule import build_batch_schedule
from megaclap.config.megatron import lr_horizons
from megaclap.config.parallel import layer_ranges
from megaclap.data import DataExhausted, build_data_sources
from megaclap.model.gpt import GPTStage
from megaclap.model.init import init_stage
from megaclap.parallel.p2p import P2P, StepInfo, evaluation_compression
from megaclap.parallel import simlink
from megaclap.parallel.collectives import world_all_reduce
from megaclap.parallel.schedules import Microbatch, forward_backward
from megaclap.training import telemetry, timers, timing
from megaclap.errors import UserError
from megaclap.training.opclock import OpClock, make_timers
from megaclap.training.timing import TimingLog
from megaclap.training.grads import GradBuffer, any_rank, clip_grad_norm, unscale_and_check
from megaclap.training.logging import (TensorBoard, flops_per_token, format_train_line,
                                       format_validation_line, validation_block)
from megaclap.training.optimizer import LossScaler, LRScheduler, build_optimizer


def build_stage(cfg, pstate) -> GPTStage:
    """This rank's GPTStage on its device, initialised (layout-independent with --use-cpu-initialization)."""
    p = cfg.parallel
    start, end = layer_ranges(cfg.model.num_layers, pstate.pp_size, p.decoder_first_pipeline_num_layers,
                              p.decoder_last_pipeline_num_layers)[pstate.pp_rank]
    stage = GPTStage(cfg.model, pstate.tp, start, end, pstate.is_first_stage, pstate.is_last_stage)
    init_stage(stage, cfg.train.seed, pstate.tp_size, pstate.tp_rank, master=p.use_cpu_initialization)
    return stage.to(pstate.device)


def compile_stage(stage: GPTStage, backend: str = "inductor", print_fn=print) -> bool:
    """--compile: torch.compile the stage's forward in place (parameters, hooks and state_dict keys
    unchanged; collectives inside autograd Functions become graph breaks). False where unsupported."""
    if not torch._dynamo.is_dynamo_supported():
        print_fn(" --compile: torch.compile is not supported on this platform; running eager")
        return False
    stage.compile(backend=backend)
    return True


def wire_dtype(optim_cfg) -> torch.dtype:
    return torch.bfloat16 if optim_cfg.bf16 else torch.float16 if optim_cfg.fp16 else torch.float32


class NonFiniteStep(UserError):
    """A bf16/fp32 step had a NaN/inf loss, gradient norm or Channel value (Megatron's default
    --check-for-nan-in-loss-and-grad): the run stops with one line naming the iteration."""


class Trainer:
    def __init__(self, cfg, pstate, print_fn=print):
        self.cfg, self.ps, self.print = cfg, pstate, print_fn
        torch.manual_seed(cfg.train.seed + 100 * pstate.pp_rank)  # dropout: same within a tp group
        self.stage = build_stage(cfg, pstate)
        self.grad_buffer = GradBuffer(self.stage, pstate, bucket_bytes=4 * cfg.parallel.ddp_bucket_size)
        if cfg.train.compile:
            compile_stage(self.stage, print_fn=print_fn)
        self.optimizer = build_optimizer(self.stage, cfg.optim, pstate.device)
        self.scheduler = LRScheduler(self.optimizer, cfg.optim, *lr_horizons(cfg))
        self.scaler = LossScaler(cfg.optim.fp16, cfg.optim.initial_loss_scale, cfg.optim.loss_scale,
                                 cfg.optim.loss_scale_window, cfg.optim.min_loss_scale, cfg.optim.hysteresis)
        self.batch_schedule = build_batch_schedule(cfg.train, cfg.model.seq_length, pstate.dp_size)
        self.consumed_samples = 0  # training samples over all dp ranks (checkpointed; survives a batch change)
        m, t = cfg.model, cfg.train
        shape = (t.micro_batch_size, m.seq_length, m.hidden_size)
        self.p2p = self.eval_p2p = None
        self.link = simlink.SimLink.from_config(cfg.parallel, pstate) if pstate.pp_size > 1 else None
        if pstate.pp_size > 1:
            skippable = self.scaler.enabled or not cfg.optim.check_for_nan_in_loss_and_grad
            self.p2p = P2P(pstate, shape, wire_dtype(cfg.optim), cfg.compression, seed=t.seed, link=self.link,
                           undo=skippable)  # Channel changes are kept for rollback only if skippable
            eval_cfg = evaluation_compression(cfg.compression)
            self.eval_p2p = P2P(pstate, shape, wire_dtype(cfg.optim), eval_cfg, seed=t.seed + 1, link=self.link)
        self.data = build_data_sources(
            cfg.data, seq_length=m.seq_length, micro_batch_size=t.micro_batch_size,
            global_batch_size=t.global_batch_size, dp_rank=pstate.dp_rank, dp_size=pstate.dp_size,
            train_iters=t.train_iters, eval_iters=t.eval_iters, eval_interval=t.eval_interval,
            seed=t.seed, vocab_size=m.vocab_size, load_tokens=pstate.is_first_stage or pstate.is_last_stage,
            shard_by_dp_rank=pstate.pp_size > 1 and "aqsgd" in (cfg.compression.method,
                                                                 cfg.compression.effective_bwd_method),
            full_validation=t.full_validation)
        self.iteration, self.skipped, self._nans, self._nan_pending = 0, 0, 0, None
        self._first_bad = None  # device: first iteration with a NaN/inf (bf16/fp32, stop mode)
        self.start_time, self.last_gbs = time.time(), t.global_batch_size
        self.tb = TensorBoard(t.tensorboard_dir if pstate.is_logging_rank else None)
        self.timers = make_timers(cfg, pstate)  # an OpClock when the time model is on
        self.time_model = TimingLog(cfg, pstate) if isinstance(self.timers, OpClock) else None
        if self.p2p is not None:
            self.p2p.timers = self.timers
        self.history: list = []  # (iteration, loss) on the last stage, for tests and tools
        self.comm_total = None   # summed telemetry array over the run (megaclap.training.telemetry)

    # --- one step --------------------------------------------------------------------------
    def autocast(self):
        o = self.cfg.optim
        if not (o.bf16 or o.fp16):
            return nullcontext()
        return torch.autocast(self.ps.device.type, dtype=torch.bfloat16 if o.bf16 else torch.float16)

    def _microbatches(self, batch) -> list[Microbatch]:
        dev = self.ps.device
        return [Microbatch(None if tok is None else tok.to(dev, non_blocking=True), ids)
                for tok, ids in batch.microbatches(self.cfg.train.micro_batch_size)]

    def _mean_loss(self, losses: list) -> float:
        """Mean microbatch loss over the data-parallel group (meaningful on the last stage)."""
        if not self.ps.is_last_stage:
            return float("nan")
        return self._dp_mean(torch.stack(losses).sum().div(len(losses)).reshape(1))[0]

    def _dp_mean(self, values: torch.Tensor) -> list:
        """Average a 1-D device tensor over the data-parallel group; one collective, one host read."""
        if self.ps.dp.group is not None:
            dist.all_reduce(values, group=self.ps.dp.group)
            values /= self.ps.dp.size
        return values.tolist()

    @property
    def nans(self) -> int:
        """Iterations with a non-finite grad norm (not skipped); read lazily (a host sync)."""
        if self._nan_pending is not None:
            self._nans += int(self._nan_pending.item())
            self._nan_pending = None
        return self._nans

    @nans.setter
    def nans(self, value: int) -> None:
        self._nans, self._nan_pending = value, None

    def train_step(self, batch, sync: bool = True, measure: Optional[bool] = None) -> dict:
        """One optimizer step. sync=True returns host floats (loss averaged over dp, grad norm);
        sync=False keeps them on the device, unreduced ("loss": this rank's mean microbatch
        loss or None off the last stage), so the step makes no host sync (fp16 makes one: the
        skip decision). measure: channels compute their telemetry error (default: sync)."""
        self.stage.train()
        self.timers.begin_step(bool(batch.fresh), len(batch.sample_ids) // self.cfg.train.micro_batch_size)
        mbs = self._microbatches(batch)
        self.grad_buffer.start(len(mbs))
        info = StepInfo(step=self.iteration, fresh=bool(batch.fresh),
                        measure=sync if measure is None else measure,
                        drawn=batch.drawn_step, rng_seed=self.cfg.train.seed)  # dropout: from the samples
        stats = forward_backward(self.stage, self.ps, self.p2p, mbs, info,
                                 schedule=self.cfg.parallel.pipeline_schedule,
                                 loss_scale=self.scaler.scale, autocast=self.autocast, timers=self.timers)
        self.last_stats = stats
        self.timers.start("dp-allreduce")  # what backward's hooks left: the last buckets, tied embedding
        self.grad_buffer.finish()  # dp average (mostly overlapped with backward), tied-embedding sum
        self.timers.stop("dp-allreduce")
        self.timers.start("grad-norm")  # the step's synchronisation of all model-parallel ranks
        skipped, grad_norm = self._skip_decision(stats)
        if self.p2p is not None:  # Channel updates belong to the step (both ends agree on `skipped`)
            self.p2p.rollback() if skipped else self.p2p.commit()
        self.timers.stop("grad-norm")
        self.timers.start("optimizer")
        gbs = self.last_gbs = len(batch.sample_ids) * self.ps.dp_size
        if not skipped:
            self.optimizer.step()
            self.scheduler.step(gbs)
            nan = (~torch.isfinite(grad_norm)).to(torch.int32)
            self._nan_pending = nan if self._nan_pending is None else self._nan_pending + nan
        self.timers.stop("optimizer")
        self.timers.end_step()
        self.iteration += 1
        self.consumed_samples += gbs
        self.skipped += int(skipped)
        loss = torch.stack(stats.losses).sum().div(len(stats.losses)) if self.ps.is_last_stage else None
        if not sync:
            return {"loss": loss, "grad_norm": grad_norm, "skipped": skipped}
        return {"loss": self._dp_mean(loss.reshape(1))[0] if loss is not None else float("nan"),
                "grad_norm": float("nan") if skipped else grad_norm.item(), "skipped": skipped}

    def _skip_decision(self, stats) -> tuple:
        """(skipped, grad norm or None) of this step; one flag over every rank, so both ends of
        every boundary and every dp replica decide alike. Non-finite values: the loss, the grads,
        and what any pipeline Channel sent, received or keeps (`P2P.finite_check`).

        fp16: overflow (or a non-finite Channel value) skips the step; one host read.
        bf16/fp32, default (--check-for-nan-in-loss-and-grad, Megatron's): no host read here; the
        first bad iteration is kept on the device and `check_finite` stops the run at the next
        log step or save, before anything is saved. --no-check-for-nan-in-loss-and-grad: the
        step is skipped and counted, at the cost of one host read per step (as fp16)."""
        channels = self.p2p.finite_check() if self.p2p is not None else None
        if self.scaler.enabled:
            skipped = unscale_and_check(self.stage, self.ps, self.scaler.scale, channels)
            self.scaler.update(skipped)
            if skipped:
                return True, None
            return False, clip_grad_norm(self.stage, self.ps, self.cfg.optim.clip_grad)
        grad_norm = clip_grad_norm(self.stage, self.ps, self.cfg.optim.clip_grad)
        parts = [grad_norm] + ([channels] if channels is not None else [])
        if self.ps.is_last_stage:
            parts.append(torch.stack(stats.losses).sum())
        bad = (~torch.isfinite(torch.stack(parts).sum())).float().reshape(1)
        if self.cfg.optim.check_for_nan_in_loss_and_grad:
            here = torch.full_like(bad, self.iteration + 1, dtype=torch.float64)
            here = torch.where(bad > 0, here, float("inf"))  # [1]: this iteration if bad, else inf
            first = self._first_bad
            self._first_bad = here if first is None else torch.minimum(first, here)
            return False, grad_norm
        if bool(any_rank(bad, self.ps).item()):
            self._nans += 1
            return True, None
        return False, grad_norm

    def check_finite(self) -> None:
        """Stop (NonFiniteStep) if a bf16/fp32 step since the last check had a non-finite loss, grad
        norm or Channel value. A collective and one host read: called on log steps and before
        every checkpoint save, so nothing is saved over the last good checkpoint."""
        if self._first_bad is None:
            return
        first = world_all_reduce(self._first_bad, self.ps, "min")  # an emulated pipeline's stages too
        value = first.item()
        self._first_bad = None
        if math.isfinite(value):
            raise NonFiniteStep(
                f"iteration {int(value)}: the loss, the gradient norm or a pipeline Channel value is "
                "NaN or inf; stopped without saving (the last checkpoint is the last good one). Lower "
                "--lr or raise the warmup, or pass --no-check-for-nan-in-loss-and-grad to skip such steps")

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, source=None) -> float:
        """Mean loss over --eval-iters batches of the validation split, or over all of it, the same
        batches every time, with --full-validation (forward only)."""
        source = source or self.data.valid
        self.stage.eval()
        losses = []
        for batch in source.eval_batches(self.cfg.train.eval_iters):
            info = StepInfo(step=self.iteration, fresh=True)
            stats = forward_backward(self.stage, self.ps, self.eval_p2p, self._microbatches(batch), info,
                                     forward_only=True, autocast=self.autocast)
            if self.ps.is_last_stage:
                losses.append(torch.stack(stats.losses).mean())
        return self._mean_loss(losses) if self.ps.is_last_stage else float("nan")

    # --- the loop -------------------------------------------------------------------------------
    def train(self, checkpointer=None) -> None:
        """Steps run without host syncs; losses and the grad norm stay on the device and are
        reduced and read once per --log-interval (_IntervalLog.reduce), which also fills history."""
        t, log = self.cfg.train, _IntervalLog()
        first = True   # Megatron also logs the run's first iteration, without closing the interval
        while self.iteration < t.train_iters:
            start = time.perf_counter()  # a step's time includes its data (as Megatron's timer)
            try:
                with self.timers.phase("data"):  # the time model counts it in the step
                    batch = self.data.train.next_batch(self.batch_schedule.at(self.consumed_samples))
            except DataExhausted as e:
                if self.ps.is_logging_rank:
                    self.print(f" stopping at iteration {self.iteration}: {e}")
                break
            log_step = (first or (self.iteration + 1) % t.log_interval == 0
                        or self.iteration + 1 == t.train_iters)
            out = self.train_step(batch, sync=False, measure=log_step)
            if log_step and self.ps.device.type == "cuda":
                torch.cuda.synchronize(self.ps.device)  # the interval's queued work ends here
            log.add(self.iteration, out, time.perf_counter() - start)
            if self.iteration % t.log_interval == 0:
                self.check_finite()
                self._log(log.reduce(self))
                log = _IntervalLog()
            elif first:
                self.check_finite()
                self._log(log.reduce(self), first=True)
            first = False
            if self.data.valid is not None and t.eval_due(self.iteration):
                self._log_validation(self.evaluate())
            if checkpointer is not None and checkpointer.after_step(self):
                break
            if t.exit_duration_in_mins and log_step and self._out_of_time(checkpointer):
                break  # checked on log steps only: the agreement is a collective and a host read
        self.check_finite()
        if log.steps:  # the last, partial interval (its bytes count too)
            self._log(log.reduce(self))
        self.tb.close()

    def _out_of_time(self, checkpointer) -> bool:
        """--exit-duration-in-mins: every rank agrees (max over the world), then save and stop."""
        over = torch.tensor([float(time.time() - self.start_time > 60 * self.cfg.train.exit_duration_in_mins)],
                            device=self.ps.device)
        world_all_reduce(over, self.ps, "max")
        done = bool(over.item())
        if done and checkpointer is not None and self.cfg.train.save:
            checkpointer.save(self)
        if done and self.ps.is_logging_rank:
            self.print(f" exiting program after {self.cfg.train.exit_duration_in_mins} minutes (--exit-duration-in-mins)")
        return done

    def gather_telemetry(self):
        """This interval's compression counters from every stage (a pp-group collective)."""
        if self.p2p is None:
            return None
        arr = telemetry.gather(self.p2p, self.ps)
        if self.comm_total is None:
            self.comm_total = arr.clone()
        else:
            self.comm_total[..., :4] += arr[..., :4]
            self.comm_total[..., 4] = arr[..., 4]
        return arr

    def _log(self, log: "_IntervalLog", first: bool = False) -> None:
        """The interval's log line and TensorBoard scalars. `first`: the run's first iteration
        inside a longer interval, logged as Megatron does: the line only (no telemetry, which
        the interval's own line reports, no modeled step time and no TensorBoard point)."""
        c, m = self.cfg, self.cfg.model
        gbs, samples = self.last_gbs, self.consumed_samples
        sec = log.seconds / max(1, log.steps)
        comp = store_rows = wire = phases = modeled = None
        if not first:
            comp = self.gather_telemetry()
            store_rows = telemetry.store_rows_by_dp_rank(self.p2p, self.ps)  # AQ-SGD rows per dp rank
            wire = simlink.gather(self.link, self.ps) if self.link is not None else None
            phases = self.timers.gather(self.ps) if self.timers.level > 0 else None
            if self.time_model is not None:  # a pp-group collective; a dict on the logging rank
                modeled = self.time_model.report(self.timers, self.iteration, sec, gbs * m.seq_length)
        if not self.ps.is_logging_rank:
            return
        tokens_s = gbs * m.seq_length / sec
        # an emulated pipeline is one device
        devices = self.ps.world_size // (self.ps.pp_size if c.parallel.pp_emulate else 1)
        tflops = flops_per_token(m, m.padded_vocab_size(self.ps.tp_size)) * tokens_s / devices / 1e12
        lr = self.optimizer.param_groups[0]["lr"]
        loss = log.loss / max(1, log.steps)
        extra = telemetry.log_fields(comp) if comp is not None else ""
        extra += f" distinct samples: {self.data.train.distinct_samples_seen} |"
        if store_rows is not None:
            extra += f" aqsgd store rows per dp rank: {'/'.join(map(str, store_rows))} |"
            self.tb.scalars({f"aqsgd-store-rows/dp{r}": n for r, n in enumerate(store_rows)}, self.iteration,
                            samples, vs_samples=False)
        extra += simlink.log_fields(wire, log.steps) if wire is not None else ""
        extra += timers.log_fields(phases, log.steps) if phases is not None else ""
        extra += timing.log_fields(modeled) if modeled is not None else ""
        self.print(format_train_line(self.iteration, c.train.train_iters, samples, sec * 1000, tflops, lr, gbs,
                                     loss, self.scaler.scale, log.grad_norm, self.skipped, self.nans,
                                     tokens_s, extra))
        if first:
            return
        scalars = {"lm loss": loss, "learning-rate": lr, "grad-norm": log.grad_norm, "loss-scale": self.scaler.scale,
                   "iteration-time": sec, "throughput": tflops, "batch-size": gbs, "tokens-per-second": tokens_s}
        self.tb.scalars({k: v for k, v in scalars.items() if v is not None}, self.iteration, samples)
        if comp is not None:
            self.tb.scalars(telemetry.tb_scalars(comp), self.iteration, samples, vs_samples=False)
        if wire is not None:
            self.tb.scalars(simlink.tb_scalars(wire, log.steps), self.iteration, samples, vs_samples=False)
        if phases is not None:
            self.tb.scalars(timers.tb_scalars(phases, log.steps), self.iteration, samples, vs_samples=False)
        if modeled is not None:
            self.tb.scalars(timing.tb_scalars(modeled), self.iteration, samples, vs_samples=False)
        self.tb.scalars({"distinct-samples": self.data.train.distinct_samples_seen}, self.iteration, samples,
                        vs_samples=False)

    def _log_validation(self, loss: float) -> None:
        if self.ps.is_logging_rank:
            samples = self.consumed_samples
            for line in validation_block(format_validation_line(self.iteration, loss)):
                self.print(line)
            self.tb.scalars({"lm loss validation": loss, "lm loss validation ppl": math.exp(min(20.0, loss))},
                            self.iteration, samples)


class _IntervalLog:
    """One --log-interval: step times, and per-step losses / last grad norm as device tensors.

    Step times are host wall times without a sync; on CUDA the log step synchronises before its
    clock stops, so the interval's sum covers the queued GPU work."""

    def __init__(self):
        self.steps, self.seconds, self.loss, self.grad_norm = 0, 0.0, 0.0, None
        self._losses: list = []  # (iteration, this rank's loss tensor or None)
        self._norm = None
        self._in_history = 0     # losses already appended to trainer.history (a first-iteration line)

    def add(self, iteration: int, out: dict, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self._losses.append((iteration, out["loss"]))
        self._norm = out["grad_norm"]  # None on a skipped step (the field is left out of the line)

    def reduce(self, trainer: "Trainer") -> "_IntervalLog":
        """Average the losses over dp (one collective) and read them and the norm (one sync);
        append (iteration, loss) to trainer.history."""
        iters = [it for it, _ in self._losses]
        if trainer.ps.is_last_stage and self._losses:
            values = trainer._dp_mean(torch.stack([loss for _, loss in self._losses]))
        else:
            values = [float("nan")] * len(iters)
        trainer.history.extend(list(zip(iters, values))[self._in_history:])
        self._in_history = len(iters)
        self.loss = sum(values)
        self.grad_norm = None if self._norm is None else self._norm.item()
        return self
