"""Start-up rules for the Megatron-LM schedule flags, model-shape flags megaclap fixes, and the
features it lacks. Called from checks.validate_config after the batch size is known.

Schedule (as Megatron's get_optimizer_param_scheduler): the LR scheduler counts samples.
Iteration-based runs (--train-iters) give their horizons in steps, converted at the constant
--global-batch-size; sample-based runs (--train-samples) give them in samples, and --train-iters
is derived from the batch-size schedule. --lr-warmup-fraction is a fraction of the decay horizon.
"""
from __future__ import annotations

from .batch_schedule import build_batch_schedule, parse_step_schedule
from .errors import ConfigError, check
from .habit_flags import check_missing_features


def check_model_shape(m) -> None:
    if m.kv_channels is not None:
        check(m.kv_channels * m.num_attention_heads == m.hidden_size,
              f"--kv-channels {m.kv_channels}: megaclap needs it equal to --hidden-size / --num-attention-heads "
              f"= {m.hidden_size // m.num_attention_heads}")
    check(m.rotary_percent == 1.0, f"--rotary-percent {m.rotary_percent}: megaclap rotates whole heads (1.0) only")


def _resolve_lengths(cfg, dp: int) -> None:
    """Fill train_iters (from --train-samples) and check the two modes are not mixed."""
    t, o = cfg.train, cfg.optim
    if t.step_batch_size_schedule:
        check(t.rampup_batch_size is None, "--step-batch-size-schedule and --rampup-batch-size are exclusive; drop one")
        try:
            last = parse_step_schedule(t.step_batch_size_schedule, cfg.model.seq_length)[-1][1]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        check(t.global_batch_size in (None, last) or t.global_batch_size == t.micro_batch_size * dp,
              f"--global-batch-size {t.global_batch_size} differs from the last batch {last} of "
              "--step-batch-size-schedule; drop one")
        t.global_batch_size = last
    schedule = build_batch_schedule(t, cfg.model.seq_length, dp)
    if t.train_samples is not None:
        check(t.train_iters is None, "--train-iters and --train-samples are exclusive (sample- or "
              "iteration-based training); drop one")
        check(o.lr_decay_iters is None and o.lr_warmup_iters == 0,
              "--train-samples is sample-based: give --lr-decay-samples / --lr-warmup-samples, not the -iters flags")
        t.train_iters = schedule.iterations_for(t.train_samples)
        check(t.train_iters > 0, f"--train-samples {t.train_samples} is less than one global batch")
    else:
        check(t.train_iters is not None, "--train-iters (or --train-samples) is required")
        check(t.train_iters > 0, "--train-iters must be positive")
        check(o.lr_decay_samples is None and o.lr_warmup_samples == 0,
              "--train-iters is iteration-based: give --lr-decay-iters / --lr-warmup-iters, not the -samples flags")
    check(not (o.lr_warmup_fraction is not None and (o.lr_warmup_iters or o.lr_warmup_samples)),
          "--lr-warmup-fraction and --lr-warmup-iters/--lr-warmup-samples are exclusive; drop one")
    if o.lr_warmup_fraction is not None:
        check(0.0 <= o.lr_warmup_fraction <= 1.0, f"--lr-warmup-fraction {o.lr_warmup_fraction} must be in [0, 1]")


def lr_horizons(cfg) -> tuple:
    """(warmup, decay) in samples, as the scheduler counts them."""
    t, o = cfg.train, cfg.optim
    if t.train_samples is not None:
        decay = o.lr_decay_samples if o.lr_decay_samples is not None else t.train_samples
        warmup = o.lr_warmup_samples
    else:
        decay = (o.lr_decay_iters if o.lr_decay_iters is not None else t.train_iters) * t.global_batch_size
        warmup = o.lr_warmup_iters * t.global_batch_size
    if o.lr_warmup_fraction is not None:
        warmup = o.lr_warmup_fraction * decay
    return warmup, decay


def _check_warmup(cfg) -> None:
    """The warmup must end within the run (else the LR never reaches --lr) and before the decay
    horizon (Megatron's assertion)."""
    t, o = cfg.train, cfg.optim
    warmup, decay = lr_horizons(cfg)
    if not warmup:
        return
    flag = ("--lr-warmup-fraction" if o.lr_warmup_fraction is not None else
            "--lr-warmup-samples" if t.train_samples is not None else "--lr-warmup-iters")
    value = {"--lr-warmup-fraction": o.lr_warmup_fraction, "--lr-warmup-samples": o.lr_warmup_samples,
             "--lr-warmup-iters": o.lr_warmup_iters}[flag]
    run = t.train_samples if t.train_samples is not None else t.train_iters * t.global_batch_size
    check(warmup < run, f"{flag} {value} is not shorter than the run ({run:g} samples, --train-iters/-samples): "
          "the learning rate would never reach --lr; shorten the warmup")
    check(warmup < decay, f"{flag} {value} does not end before the LR decay horizon ({decay:g} samples, "
          "--lr-decay-iters/-samples); shorten the warmup or lengthen the decay")


def check_megatron_args(cfg, tp: int, pp: int, dp: int) -> None:
    """Every rule above, in place (fills train_iters and the decay horizon)."""
    check_missing_features(cfg.megatron_flags, tp, pp, dp)
    check_model_shape(cfg.model)
    _resolve_lengths(cfg, dp)
    if cfg.train.train_samples is None and cfg.optim.lr_decay_iters is None:
        cfg.optim.lr_decay_iters = cfg.train.train_iters
    _check_warmup(cfg)
    check(cfg.optim.hysteresis >= 1, "--hysteresis must be >= 1")
    if cfg.optim.decoupled_lr is not None and cfg.optim.decoupled_min_lr is not None:
        check(cfg.optim.decoupled_min_lr <= cfg.optim.decoupled_lr,
              f"--decoupled-min-lr {cfg.optim.decoupled_min_lr} exceeds --decoupled-lr {cfg.optim.decoupled_lr}")
