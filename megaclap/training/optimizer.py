"""AdamW (apex FusedAdam when importable), Megatron's LR schedule (in samples), and the fp16 loss scaler."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from megaclap.checkpoint.format import optimizer_groups


def _param_groups(model: torch.nn.Module, optim_cfg) -> list[dict]:
    """No weight decay on biases and norm weights (1-D tensors), as Megatron; with
    --decoupled-lr the word embedding and output layer get their own group and schedule. The
    order is megaclap.checkpoint.format's, which the resharding tool relies on."""
    o = optim_cfg
    params = dict(model.named_parameters())
    out = []
    for no_decay, decoupled, names in optimizer_groups(params.items(), o.decoupled_lr is not None):
        group = {"params": [params[n] for n in names], "weight_decay": 0.0 if no_decay else o.weight_decay}
        if decoupled:  # its own schedule; the other groups follow the scheduler's (checkpointed) lr
            group.update(max_lr=o.decoupled_lr,
                         min_lr=o.decoupled_min_lr if o.decoupled_min_lr is not None else o.min_lr)
        out.append(group)
    return out


def build_optimizer(model: torch.nn.Module, optim_cfg, device: torch.device) -> torch.optim.Optimizer:
    groups = _param_groups(model, optim_cfg)
    kwargs = dict(lr=optim_cfg.lr, betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2), eps=optim_cfg.adam_eps)
    if device.type == "cuda":
        try:  # optional: NVIDIA apex, when the user built it
            from apex.optimizers import FusedAdam
            return FusedAdam(groups, adam_w_mode=True, **kwargs)
        except ImportError:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_at(num_steps: float, max_lr: float, min_lr: float, warmup: float, decay: float, style: str,
          init_lr: float = 0.0) -> float:
    """Megatron's OptimizerParamScheduler.get_lr: linear warmup from init_lr to max_lr over
    `warmup`, then constant / linear / cosine / inverse-square-root decay to min_lr at `decay`
    (all counted in samples)."""
    if warmup > 0 and num_steps <= warmup:
        return init_lr + (max_lr - init_lr) * num_steps / warmup
    if style == "constant":
        return max_lr
    if style == "inverse-square-root":
        return max(min_lr, max_lr * max(warmup, 1) ** 0.5 / max(num_steps, 1) ** 0.5)
    if num_steps > decay:
        return min_lr
    ratio = (num_steps - warmup) / max(1e-12, decay - warmup)
    coeff = 1.0 - ratio if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return min_lr + coeff * (max_lr - min_lr)


class LRScheduler:
    """Megatron's OptimizerParamScheduler: counts consumed samples (`num_steps`), so the
    schedule is the same for iteration- and sample-based runs and through batch-size ramp-up.
    `warmup` and `decay` are in samples (megaclap.config.megatron.lr_horizons)."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim_cfg, warmup: float, decay: float):
        self.optimizer, self.cfg, self.num_steps = optimizer, dataclasses.replace(optim_cfg), 0
        self.warmup, self.decay = warmup, decay
        self.step(0)

    def get_lr(self, group: Optional[dict] = None) -> float:
        c = self.cfg
        max_lr, min_lr = (group["max_lr"], group["min_lr"]) if group else (c.lr, c.min_lr)
        return lr_at(self.num_steps, max_lr, min_lr, self.warmup, self.decay, c.lr_decay_style, c.lr_warmup_init)

    def step(self, increment: int = 1) -> float:
        """Advance by `increment` samples (the step's global batch)."""
        self.num_steps += increment
        for g in self.optimizer.param_groups:
            g["lr"] = self.get_lr(g if "max_lr" in g else None)
        return self.get_lr()

    def state_dict(self) -> dict:
        c = self.cfg
        return {"num_steps": self.num_steps, "max_lr": c.lr, "min_lr": c.min_lr, "lr_warmup_steps": self.warmup,
                "lr_decay_steps": self.decay, "lr_decay_style": c.lr_decay_style}

    def load_state_dict(self, sd: dict) -> None:
        """Restore the step count and, where present, the schedule (the checkpoint's, after
        megaclap.training.checkpointing.reconcile_schedule chose it)."""
        c = self.cfg
        c.lr, c.min_lr = sd.get("max_lr", c.lr), sd.get("min_lr", c.min_lr)
        c.lr_decay_style = sd.get("lr_decay_style", c.lr_decay_style)
        self.warmup, self.decay = sd.get("lr_warmup_steps", self.warmup), sd.get("lr_decay_steps", self.decay)
        self.num_steps = 0
        self.step(sd["num_steps"])


class LossScaler:
    """Static or dynamic loss scale (fp16), as Megatron's DynamicGradScaler: an overflow resets
    the growth count and uses up one of `hysteresis` tolerated overflows; when none is left the
    scale halves (not below min_scale). After `window` clean steps the scale doubles and the
    hysteresis is restored. Scale 1.0 and no checks when disabled (fp32 / bf16)."""

    def __init__(self, enabled: bool, initial: float = 2.0 ** 32, static: float | None = None,
                 window: int = 1000, min_scale: float = 1.0, hysteresis: int = 1):
        self.enabled, self.dynamic = enabled, enabled and static is None
        self.scale = (static if static is not None else initial) if enabled else 1.0
        self.window, self.min_scale, self.clean_steps = window, min_scale, 0
        self.hysteresis, self.hysteresis_left = hysteresis, hysteresis

    def update(self, found_inf: bool) -> None:
        if not self.dynamic:
            return
        if found_inf:
            self.clean_steps = 0
            self.hysteresis_left -= 1
            if self.hysteresis_left <= 0:
                self.scale = max(self.min_scale, self.scale / 2.0)
        else:
            self.clean_steps += 1
            if self.clean_steps == self.window:
                self.clean_steps = 0
                self.hysteresis_left = self.hysteresis
                self.scale *= 2.0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "hysteresis_left": self.hysteresis_left}

    def load_state_dict(self, sd: dict) -> None:
        self.scale, self.clean_steps = sd["scale"], sd["clean_steps"]
        self.hysteresis_left = sd.get("hysteresis_left", self.hysteresis)
