"""Start-up validation of a MegaclapConfig: one rule, one one-line message naming the flag.

validate_config runs the rules in a fixed order (the first broken rule is the one reported):
layout, positive sizes, choices, model, stages, batches, precision, the Megatron-LM rules
(megatron.py), then each section's own `validate` (data, compression) and the warnings.
"""
from __future__ import annotations

import dataclasses
import warnings

from . import compression as compression_rules
from .errors import ConfigError, check
from .flags import flag_name
from .megatron import check_megatron_args
from .parallel import layer_ranges
from .train import parse_eval_schedule


def _check_choices(cfg) -> None:
    """Fields with `choices` metadata hold one of them (argparse checks the command line; this
    catches values set in code). None is allowed where it is the field's default."""
    for section in (cfg.model, cfg.parallel, cfg.optim):
        for f in dataclasses.fields(section):
            if "choices" in f.metadata:
                allowed, value = f.metadata["choices"], getattr(section, f.name)
                check(value in allowed or (value is None and f.default is None),
                      f"{flag_name(f)} {value!r} is not one of {list(allowed)}")


def _check_model(cfg, tp: int) -> None:
    m = cfg.model
    check(m.vocab_size is not None and m.vocab_size > 0,
          "--vocab-size is required (with --mock-data, or a tokenizer that does not give it)")
    check(m.hidden_size % m.num_attention_heads == 0,
          f"--hidden-size {m.hidden_size} is not divisible by --num-attention-heads {m.num_attention_heads}")
    check(m.num_attention_heads % tp == 0,
          f"--num-attention-heads {m.num_attention_heads} is not divisible by --tensor-model-parallel-size {tp}")
    if m.group_query_attention:
        check(m.num_query_groups is not None and m.num_query_groups > 0,
              "--group-query-attention needs --num-query-groups")
        check(m.num_attention_heads % m.num_query_groups == 0,
              f"--num-attention-heads {m.num_attention_heads} is not divisible by "
              f"--num-query-groups {m.num_query_groups}")
    check(m.query_groups % tp == 0,
          f"--num-query-groups {m.query_groups} is not divisible by --tensor-model-parallel-size {tp}")
    check(m.ffn % tp == 0, f"--ffn-hidden-size {m.ffn} is not divisible by --tensor-model-parallel-size {tp}")
    if m.max_position_embeddings is None:
        m.max_position_embeddings = m.seq_length
    if m.position_embedding_type == "learned_absolute":
        check(m.seq_length <= m.max_position_embeddings,
              f"--seq-length {m.seq_length} exceeds --max-position-embeddings {m.max_position_embeddings} "
              "(learned positions); raise --max-position-embeddings")
    check(0.0 <= m.hidden_dropout < 1 and 0.0 <= m.attention_dropout < 1,
          "--hidden-dropout and --attention-dropout must be in [0, 1)")


def _check_layers(cfg, pp: int) -> None:
    layer_ranges(cfg.model.num_layers, pp, cfg.parallel.decoder_first_pipeline_num_layers,
                 cfg.parallel.decoder_last_pipeline_num_layers)


def _check_batches(cfg, dp: int) -> None:
    t = cfg.train
    if t.global_batch_size is None:
        t.global_batch_size = t.micro_batch_size * dp
    check(t.global_batch_size % (t.micro_batch_size * dp) == 0,
          f"--global-batch-size {t.global_batch_size} is not divisible by --micro-batch-size "
          f"{t.micro_batch_size} x data-parallel size {dp}")
    check(t.log_interval > 0 and t.eval_interval > 0, "--log-interval and --eval-interval must be positive")
    try:
        parse_eval_schedule(t.eval_interval_schedule)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check(cfg.parallel.ddp_bucket_size > 0, "--ddp-bucket-size must be a positive number of gradient elements")


def _check_precision(cfg) -> None:
    o = cfg.optim
    check(not (o.fp16 and o.bf16), "--fp16 and --bf16 are both set; choose one")
    check(o.min_lr <= o.lr, f"--min-lr {o.min_lr} exceeds --lr {o.lr}")
    check(o.clip_grad >= 0, f"--clip-grad {o.clip_grad} must be >= 0 (the largest gradient norm kept; 0 "
          "disables clipping)")
    check(o.weight_decay >= 0, f"--weight-decay {o.weight_decay} must be >= 0 (AdamW's decoupled decay pulls "
          "weights toward zero; a negative value grows them)")
    if o.fp16 and cfg.parallel.pipeline_model_parallel_size > 1:
        c = cfg.compression
        try:
            compression_rules.check_fp16_recovery(c.method, c.bwd_method, c.fwd_codec, c.bwd_codec,
                                                  c.clapping_fc_init)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_positive_sizes(cfg) -> None:
    """Sizes that must be >= 1 (or > 0) before anything divides by them or builds from them."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    for flag, value in (("--micro-batch-size", t.micro_batch_size), ("--num-layers", m.num_layers),
                        ("--make-vocab-size-divisible-by", m.make_vocab_size_divisible_by),
                        ("--seq-length", m.seq_length)):
        check(value is not None and value >= 1, f"{flag} {value} must be a positive integer")
    check(m.ffn_hidden_size is None or m.ffn_hidden_size >= 1,
          f"--ffn-hidden-size {m.ffn_hidden_size} must be a positive integer (leave it out for the default 4h)")
    timeout = p.distributed_timeout_minutes
    check(timeout is not None and timeout > 0,
          f"--distributed-timeout-minutes {timeout} must be positive (minutes a collective may wait)")


def _warn_clapping_without_lazy_sampling(cfg) -> None:
    """Clapping relies on repeated batches: without lazy sampling every step is fresh, so FU
    sends everything raw and FC resets its reference every step (it acts as `direct`)."""
    d, c = cfg.data, cfg.compression
    methods = {c.method, c.effective_bwd_method} & {"clapping-fu", "clapping-fc"}
    if c.clapping_fc_init == "previous":  # FC keeping its reference is ef21 on every step: fine
        methods.discard("clapping-fc")
    lazy = (d.lazy_sampling_prob is not None and d.lazy_sampling_prob < 1) or \
        (d.lazy_sampling_period is not None and d.lazy_sampling_period > 1)
    if methods and not lazy and cfg.parallel.pipeline_model_parallel_size > 1:
        effect = "sends every step uncompressed" if "clapping-fu" in methods else "behaves as direct"
        warnings.warn(f"{'/'.join(sorted(methods))} without lazy sampling {effect}: set "
                      "--lazy-sampling-prob (< 1) or --lazy-sampling-period (> 1)")


def _check_emulation(cfg, world_size: int) -> None:
    """--pp-emulate holds a whole pipeline in one process: no tp inside it, no per-process link."""
    p, t = cfg.parallel, cfg.train
    if not p.pp_emulate:
        return
    check(p.tensor_model_parallel_size == 1,
          "--pp-emulate with --tensor-model-parallel-size > 1 is not supported: emulate the pipeline "
          "at tp 1 (the stage boundaries and Channels are the same) or launch one process per stage")
    check(p.sim_link_bandwidth is None and p.sim_link_latency is None,
          "--sim-link-bandwidth/--sim-link-latency delay messages between processes; with --pp-emulate "
          "price links from the run's own measurements with --sim-links instead")
    check(not t.compile, "--compile is not supported with --pp-emulate (its stages run in one "
          "process's threads); drop one of the two")
    tp = p.tensor_model_parallel_size
    check(world_size % tp == 0, f"--pp-emulate: {world_size} processes are not divisible by "
          f"--tensor-model-parallel-size {tp}; launch tp x dp processes (one per pipeline replica)")


def validate_config(cfg, world_size: int) -> None:
    """Validate in place (filling derived defaults); raise ConfigError with the flag to change.
    world_size is the number of processes (with --pp-emulate, each holds a whole pipeline)."""
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    check(tp >= 1 and pp >= 1, "--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
    _check_emulation(cfg, world_size)
    world_size = p.grid_world_size(world_size)
    check(world_size % (tp * pp) == 0,
          f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
          f"--pipeline-model-parallel-size {pp}; change --nproc_per_node/--nnodes or the parallel sizes")
    dp = world_size // (tp * pp)
    _check_positive_sizes(cfg)
    _check_choices(cfg)
    _check_model(cfg, tp)
    _check_layers(cfg, pp)
    check(pp == 1 or cfg.model.seq_length % tp == 0,
          f"--seq-length {cfg.model.seq_length} is not divisible by --tensor-model-parallel-size {tp} "
          "(pipeline boundaries are split across tp ranks by sequence)")
    _check_batches(cfg, dp)
    _check_precision(cfg)
    check_megatron_args(cfg, tp, pp, dp)
    try:
        cfg.data.validate()
        cfg.compression.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _warn_clapping_without_lazy_sampling(cfg)
    if pp == 1 and cfg.compression.method != "none":
        warnings.warn(f"--pp-compression-method {cfg.compression.method} with "
                      "--pipeline-model-parallel-size 1: there is no stage boundary, nothing to compress")
