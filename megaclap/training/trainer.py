"""The training loop, top to bottom: build, then step / log / evaluate / save until done.

One Trainer per rank. Each rank builds only its pipeline stage; only the first and last
stages read token data, every stage reads the sample ids and the step's `fresh` flag.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from megaclap.data import DataExhausted, build_data_sources
from megaclap.model.gpt import GPTStage
from megaclap.model.init import init_stage
from megaclap.model.stages import layer_ranges
from megaclap.parallel.p2p import P2P, StepInfo, evaluation_compression
from megaclap.parallel import simlink
from megaclap.parallel.schedules import Microbatch, forward_backward
from megaclap.training import telemetry
from megaclap.training.grads import clip_grad_norm, found_inf_or_nan, sync_grads
from megaclap.training.logging import (TensorBoard, flops_per_token, format_train_line,
                                       format_validation_line)
from megaclap.training.optimizer import LossScaler, LRScheduler, build_optimizer


def build_stage(cfg, pstate) -> GPTStage:
    """This rank's GPTStage on its device, initialised (layout-independent with --use-cpu-initialization)."""
    p = cfg.parallel
    start, end = layer_ranges(cfg.model.num_layers, pstate.pp_size, p.decoder_first_pipeline_num_layers,
                              p.decoder_last_pipeline_num_layers)[pstate.pp_rank]
    stage = GPTStage(cfg.model, pstate.tp, start, end, pstate.is_first_stage, pstate.is_last_stage)
    init_stage(stage, cfg.train.seed, pstate.tp_size, pstate.tp_rank, master=p.use_cpu_initialization)
    return stage.to(pstate.device)


def wire_dtype(optim_cfg) -> torch.dtype:
    return torch.bfloat16 if optim_cfg.bf16 else torch.float16 if optim_cfg.fp16 else torch.float32


class Trainer:
    def __init__(self, cfg, pstate, print_fn=print):
        self.cfg, self.ps, self.print = cfg, pstate, print_fn
        torch.manual_seed(cfg.train.seed + 100 * pstate.pp_rank)  # dropout: same within a tp group
        self.stage = build_stage(cfg, pstate)
        self.optimizer = build_optimizer(self.stage, cfg.optim, pstate.device)
        self.scheduler = LRScheduler(self.optimizer, cfg.optim)
        self.scaler = LossScaler(cfg.optim.fp16, cfg.optim.initial_loss_scale, cfg.optim.loss_scale,
                                 cfg.optim.loss_scale_window)
        m, t = cfg.model, cfg.train
        shape = (t.micro_batch_size, m.seq_length, m.hidden_size)
        self.p2p = self.eval_p2p = None
        self.link = simlink.SimLink.from_config(cfg.parallel, pstate.device) if pstate.pp_size > 1 else None
        if pstate.pp_size > 1:
            self.p2p = P2P(pstate, shape, wire_dtype(cfg.optim), cfg.compression, seed=t.seed, link=self.link)
            eval_cfg = evaluation_compression(cfg.compression)
            self.eval_p2p = P2P(pstate, shape, wire_dtype(cfg.optim), eval_cfg, seed=t.seed + 1, link=self.link)
        self.data = build_data_sources(
            cfg.data, seq_length=m.seq_length, micro_batch_size=t.micro_batch_size,
            global_batch_size=t.global_batch_size, dp_rank=pstate.dp_rank, dp_size=pstate.dp_size,
            train_iters=t.train_iters, eval_iters=t.eval_iters, eval_interval=t.eval_interval,
            seed=t.seed, vocab_size=m.vocab_size, load_tokens=pstate.is_first_stage or pstate.is_last_stage)
        self.iteration, self.skipped, self.nans = 0, 0, 0
        self.tb = TensorBoard(t.tensorboard_dir if pstate.is_logging_rank else None)
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
        total = torch.stack(losses).sum() / len(losses)
        if self.ps.dp.group is not None:
            dist.all_reduce(total, group=self.ps.dp.group)
            total /= self.ps.dp.size
        return total.item()

    def train_step(self, batch) -> dict:
        self.stage.train()
        for p in self.stage.parameters():
            p.grad = None
        info = StepInfo(step=self.iteration, fresh=bool(batch.fresh))
        stats = forward_backward(self.stage, self.ps, self.p2p, self._microbatches(batch), info,
                                 schedule=self.cfg.parallel.pipeline_schedule,
                                 loss_scale=self.scaler.scale, autocast=self.autocast)
        self.last_stats = stats
        sync_grads(self.stage, self.ps)
        skipped = False
        if self.scaler.enabled:
            torch._foreach_mul_([p.grad for p in self.stage.parameters()], 1.0 / self.scaler.scale)
            skipped = found_inf_or_nan(self.stage, self.ps)
            self.scaler.update(skipped)
        grad_norm = float("nan") if skipped else clip_grad_norm(self.stage, self.ps, self.cfg.optim.clip_grad)
        if not skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.iteration += 1
        self.skipped += int(skipped)
        self.nans += int(not math.isfinite(grad_norm) and not skipped)
        return {"loss": self._mean_loss(stats.losses), "grad_norm": grad_norm, "skipped": skipped}

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, source=None) -> float:
        """Mean loss over --eval-iters batches of the validation split (forward only)."""
        source = source or self.data.valid
        self.stage.eval()
        losses = []
        for _ in range(self.cfg.train.eval_iters):
            batch = source.next_batch()
            info = StepInfo(step=self.iteration, fresh=True)
            stats = forward_backward(self.stage, self.ps, self.eval_p2p, self._microbatches(batch), info,
                                     forward_only=True, autocast=self.autocast)
            if self.ps.is_last_stage:
                losses.append(torch.stack(stats.losses).mean())
        return self._mean_loss(losses) if self.ps.is_last_stage else float("nan")

    # --- the loop -------------------------------------------------------------------------------
    def train(self, checkpointer=None) -> None:
        t, log = self.cfg.train, _IntervalLog()
        while self.iteration < t.train_iters:
            try:
                batch = self.data.train.next_batch()
            except DataExhausted as e:
                if self.ps.is_logging_rank:
                    self.print(f" stopping at iteration {self.iteration}: {e}")
                break
            start = time.perf_counter()
            out = self.train_step(batch)
            if self.ps.device.type == "cuda":
                torch.cuda.synchronize()
            log.add(out, time.perf_counter() - start)
            self.history.append((self.iteration, out["loss"]))
            if self.iteration % t.log_interval == 0:
                self._log(log)
                log = _IntervalLog()
            if self.data.valid is not None and self.iteration % t.eval_interval == 0:
                self._log_validation(self.evaluate())
            if checkpointer is not None and checkpointer.after_step(self):
                break
        if log.steps:  # the last, partial interval (its bytes count too)
            self._log(log)
        self.tb.close()

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

    def _log(self, log: "_IntervalLog") -> None:
        comp = self.gather_telemetry()
        wire = simlink.gather(self.link, self.ps) if self.link is not None else None
        if not self.ps.is_logging_rank:
            return
        c, m = self.cfg, self.cfg.model
        gbs, samples = c.train.global_batch_size, self.iteration * c.train.global_batch_size
        sec = log.seconds / max(1, log.steps)
        tokens_s = gbs * m.seq_length / sec
        tflops = flops_per_token(m, m.padded_vocab_size(self.ps.tp_size)) * tokens_s / self.ps.world_size / 1e12
        lr = self.optimizer.param_groups[0]["lr"]
        loss = log.loss / max(1, log.steps)
        extra = telemetry.log_fields(comp) if comp is not None else ""
        extra += f" distinct samples: {self.data.train.distinct_samples_seen} |"
        extra += simlink.log_fields(wire, log.steps) if wire is not None else ""
        self.print(format_train_line(self.iteration, c.train.train_iters, samples, sec * 1000, tflops, lr, gbs,
                                     loss, self.scaler.scale, log.grad_norm, self.skipped, self.nans,
                                     tokens_s, extra))
        scalars = {"lm loss": loss, "learning-rate": lr, "grad-norm": log.grad_norm, "loss-scale": self.scaler.scale,
                   "iteration-time": sec, "throughput": tflops, "batch-size": gbs, "tokens-per-second": tokens_s}
        self.tb.scalars(scalars, self.iteration, samples)
        if comp is not None:
            self.tb.scalars(telemetry.tb_scalars(comp), self.iteration, samples, vs_samples=False)
        if wire is not None:
            self.tb.scalars(simlink.tb_scalars(wire, log.steps), self.iteration, samples, vs_samples=False)
        self.tb.scalars({"distinct-samples": self.data.train.distinct_samples_seen}, self.iteration, samples,
                        vs_samples=False)

    def _log_validation(self, loss: float) -> None:
        if self.ps.is_logging_rank:
            samples = self.iteration * self.cfg.train.global_batch_size
            self.print("-" * 100)
            self.print(format_validation_line(self.iteration, loss))
            self.print("-" * 100)
            self.tb.scalars({"lm loss validation": loss, "lm loss validation ppl": math.exp(min(20.0, loss))},
                            self.iteration, samples)


class _IntervalLog:
    """Sums over one --log-interval."""

    def __init__(self):
        self.steps, self.seconds, self.loss, self.grad_norm = 0, 0.0, 0.0, 0.0

    def add(self, out: dict, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self.loss += out["loss"]
        self.grad_norm = out["grad_norm"]
