"""AdamW (apex FusedAdam when importable), Megatron's LR schedule, and the fp16 loss scaler."""
from __future__ import annotations

import dataclasses
import math

import torch

from megaclap.checkpoint.format import optimizer_group_names


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-D tensors), as Megatron; the order is
    megaclap.checkpoint.format's, which the resharding tool relies on."""
    params = dict(model.named_parameters())
    decay, no_decay = ([params[n] for n in names] for names in optimizer_group_names(params.items()))
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim_cfg, device: torch.device) -> torch.optim.Optimizer:
    groups = _param_groups(model, optim_cfg.weight_decay)
    kwargs = dict(lr=optim_cfg.lr, betas=(optim_cfg.adam_beta1, optim_cfg.adam_beta2), eps=optim_cfg.adam_eps)
    if device.type == "cuda":
        try:  # optional: NVIDIA apex, when the user built it
            from apex.optimizers import FusedAdam
            return FusedAdam(groups, adam_w_mode=True, **kwargs)
        except ImportError:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


class LRScheduler:
    """Linear warmup to --lr over --lr-warmup-iters, then constant / linear / cosine decay to
    --min-lr at --lr-decay-iters (Megatron's OptimizerParamScheduler, iteration-based).
    state_dict holds the schedule (Megatron's key names) so a resume can check it."""

    FIELDS = {"max_lr": "lr", "min_lr": "min_lr", "lr_warmup_steps": "lr_warmup_iters",
              "lr_decay_steps": "lr_decay_iters", "lr_decay_style": "lr_decay_style"}

    def __init__(self, optimizer: torch.optim.Optimizer, optim_cfg):
        self.optimizer, self.cfg, self.num_steps = optimizer, dataclasses.replace(optim_cfg), 0
        self.step(0)

    def get_lr(self) -> float:
        c, n = self.cfg, self.num_steps
        if c.lr_warmup_iters > 0 and n <= c.lr_warmup_iters:
            return c.lr * n / c.lr_warmup_iters
        if c.lr_decay_style == "constant":
            return c.lr
        span = max(1, c.lr_decay_iters - c.lr_warmup_iters)
        ratio = min(1.0, (n - c.lr_warmup_iters) / span)
        coeff = 1.0 - ratio if c.lr_decay_style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return c.min_lr + coeff * (c.lr - c.min_lr)

    def step(self, increment: int = 1) -> float:
        self.num_steps += increment
        lr = self.get_lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, **{k: getattr(self.cfg, f) for k, f in self.FIELDS.items()}}

    def load_state_dict(self, sd: dict) -> None:
        for key, name in self.FIELDS.items():
            if key in sd:
                setattr(self.cfg, name, sd[key])
        self.num_steps = 0
        self.step(sd["num_steps"])


class LossScaler:
    """Static or dynamic loss scale (fp16). Dynamic: halve on overflow, double after
    `window` clean steps. Scale 1.0 and no checks when disabled (fp32 / bf16)."""

    def __init__(self, enabled: bool, initial: float = 2.0 ** 32, static: float | None = None,
                 window: int = 1000, min_scale: float = 1.0):
        self.enabled, self.dynamic = enabled, enabled and static is None
        self.scale = (static if static is not None else initial) if enabled else 1.0
        self.window, self.min_scale, self.clean_steps = window, min_scale, 0

    def update(self, found_inf: bool) -> None:
        if not self.dynamic:
            return
        if found_inf:
            self.scale = max(self.min_scale, self.scale / 2.0)
            self.clean_steps = 0
        else:
            self.clean_steps += 1
            if self.clean_steps % self.window == 0:
                self.scale *= 2.0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, sd: dict) -> None:
        self.scale, self.clean_steps = sd["scale"], sd["clean_steps"]
