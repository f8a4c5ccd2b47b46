"""OptimConfig: AdamW, the LR schedule, gradient clipping, mixed precision and loss scaling."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


@dataclass
class OptimConfig:
    """AdamW, LR schedule, clipping and mixed precision."""

    lr: float = 1e-3
    """--lr: peak learning rate."""
    min_lr: float = 0.0
    """--min-lr: floor of the decay."""
    lr_decay_style: str = field(default="linear", metadata={"choices": LR_DECAY_STYLES})
    """--lr-decay-style: decay from --lr to --min-lr after the warmup."""
    lr_warmup_iters: int = 0
    """--lr-warmup-iters: linear warmup steps (iteration-based training)."""
    lr_warmup_samples: int = 0
    """--lr-warmup-samples: linear warmup in samples (with --train-samples)."""
    lr_warmup_fraction: Optional[float] = None
    """--lr-warmup-fraction: warmup as a fraction of the decay horizon (instead of iters/samples)."""
    lr_warmup_init: float = 0.0
    """--lr-warmup-init: learning rate at the start of the warmup."""
    lr_decay_iters: Optional[int] = None
    """--lr-decay-iters: decay horizon in steps (default --train-iters)."""
    lr_decay_samples: Optional[int] = None
    """--lr-decay-samples: decay horizon in samples (with --train-samples; default --train-samples)."""
    decoupled_lr: Optional[float] = None
    """--decoupled-lr: peak learning rate of the word embedding and output layer (default --lr)."""
    decoupled_min_lr: Optional[float] = None
    """--decoupled-min-lr: floor of the decoupled learning rate (default --min-lr)."""
    weight_decay: float = 0.01
    """--weight-decay: AdamW decoupled weight decay (not on biases and norms)."""
    adam_beta1: float = 0.9
    """--adam-beta1: Adam's first-moment decay."""
    adam_beta2: float = 0.999
    """--adam-beta2: Adam's second-moment decay."""
    adam_eps: float = 1e-8
    """--adam-eps: Adam's denominator epsilon."""
    clip_grad: float = 1.0
    """--clip-grad: clip the global gradient norm (0 disables)."""
    bf16: bool = False
    """--bf16: bf16 autocast; bf16 on the pipeline wire."""
    fp16: bool = False
    """--fp16: fp16 autocast with dynamic loss scaling."""
    loss_scale: Optional[float] = None
    """--loss-scale: static loss scale for fp16 (default dynamic)."""
    initial_loss_scale: float = 2.0 ** 32
    """--initial-loss-scale: start of the dynamic loss scale."""
    loss_scale_window: int = 1000
    """--loss-scale-window: steps without overflow before the scale doubles."""
    hysteresis: int = 2
    """--hysteresis: overflows tolerated (since the last growth) before the dynamic scale halves."""
    min_loss_scale: float = 1.0
    """--min-loss-scale: floor of the dynamic loss scale."""
    check_for_nan_in_loss_and_grad: bool = field(default=True,
                                                 metadata={"flag": "--no-check-for-nan-in-loss-and-grad"})
    """--no-check-for-nan-in-loss-and-grad: under bf16/fp32, skip and count a step whose loss,
    gradient norm or pipeline Channel values are NaN/inf (one host read per step). Default, as
    Megatron: stop with one line naming the iteration, saving nothing over the last good
    checkpoint (checked on log steps and before saves, no per-step sync). fp16 always skips."""
    override_opt_param_scheduler: bool = field(default=False, metadata={
        "flag": "--override-opt_param-scheduler", "aliases": ("--override-opt-param-scheduler",)})
    """--override-opt_param-scheduler: on resume, use this run's LR schedule flags instead of the checkpoint's."""
    use_checkpoint_opt_param_scheduler: bool = field(default=False, metadata={
        "flag": "--use-checkpoint-opt_param-scheduler", "aliases": ("--use-checkpoint-opt-param-scheduler",)})
    """--use-checkpoint-opt_param-scheduler: on resume, keep the checkpoint's LR schedule, ignoring the flags."""

    def __post_init__(self):
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise ValueError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler "
                             "exclude each other: pass one")
