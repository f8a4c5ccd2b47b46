"""Run configuration: nested dataclasses, Megatron-LM flag names, start-up validation.

Every check runs on every rank before any collective, so a bad flag gives each rank the
same one-line error that names the flag to change, instead of a hang.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from megaclap.compression.config import CompressionConfig
from megaclap.data.config import DataConfig

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


class ConfigError(ValueError):
    """A flag has a bad value; the message names the flag to change."""


@dataclass
class ModelConfig:
    """Transformer shape and flavour (GPT-2: the defaults; Llama: RMSNorm + swiglu + rope + untied + no bias)."""

    num_layers: int = field(default=2, metadata={"required": True})
    """--num-layers: transformer layers in the whole model."""
    hidden_size: int = field(default=64, metadata={"required": True})
    """--hidden-size: model width h."""
    num_attention_heads: int = field(default=4, metadata={"required": True})
    """--num-attention-heads: query heads."""
    ffn_hidden_size: Optional[int] = None
    """--ffn-hidden-size: MLP width; default 4h (with --swiglu, 8h/3 rounded down to a multiple of 64, as Megatron)."""
    num_query_groups: Optional[int] = None
    """--num-query-groups: key/value heads when --group-query-attention is set."""
    kv_channels: Optional[int] = None
    """--kv-channels: attention head dimension; megaclap requires hidden-size / num-attention-heads."""
    group_query_attention: bool = False
    """--group-query-attention: use num_query_groups key/value heads (GQA)."""
    seq_length: int = field(default=128, metadata={"required": True})
    """--seq-length: tokens per sample."""
    max_position_embeddings: Optional[int] = None
    """--max-position-embeddings: size of the learned position table; default seq_length."""
    position_embedding_type: str = field(default="learned_absolute", metadata={"choices": ("learned_absolute", "rope")})
    """--position-embedding-type: learned_absolute (GPT-2) or rope (Llama)."""
    rotary_base: float = 10000.0
    """--rotary-base: RoPE theta."""
    rotary_percent: float = 1.0
    """--rotary-percent: fraction of each head rotated by RoPE; megaclap supports 1.0 only."""
    normalization: str = field(default="LayerNorm", metadata={"choices": ("LayerNorm", "RMSNorm")})
    """--normalization: LayerNorm or RMSNorm."""
    norm_epsilon: float = 1e-5
    """--norm-epsilon: epsilon of the norm layers."""
    swiglu: bool = False
    """--swiglu: gated SiLU MLP instead of GELU."""
    openai_gelu: bool = False
    """--openai-gelu: tanh-approximated GELU (GPT-2's gelu_new); default the exact erf GELU, as Megatron."""
    untie_embeddings_and_output_weights: bool = False
    """--untie-embeddings-and-output-weights: separate output layer (Llama)."""
    disable_bias_linear: bool = False
    """--disable-bias-linear: no biases in linear layers (Llama)."""
    init_method_std: float = 0.02
    """--init-method-std: std of the normal init; output layers get std/sqrt(2L)."""
    hidden_dropout: float = 0.1
    """--hidden-dropout: dropout after attention and MLP (Megatron's default 0.1)."""
    attention_dropout: float = 0.1
    """--attention-dropout: dropout on attention probabilities."""
    vocab_size: Optional[int] = None
    """--vocab-size: tokenizer vocabulary (default from the tokenizer; required with --mock-data)."""
    make_vocab_size_divisible_by: int = 128
    """--make-vocab-size-divisible-by: the padded vocabulary is a multiple of this times tp."""
    recompute_granularity: Optional[str] = field(default=None, metadata={"choices": ("full",)})
    """--recompute-granularity: 'full' recomputes each layer in backward to save memory."""

    @property
    def ffn(self) -> int:
        if self.ffn_hidden_size:
            return self.ffn_hidden_size
        if self.swiglu:
            return int((4 * self.hidden_size * 2 / 3) / 64) * 64 or 4 * self.hidden_size
        return 4 * self.hidden_size

    @property
    def query_groups(self) -> int:
        return self.num_query_groups if self.group_query_attention else self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        """Vocabulary padded to a multiple of make_vocab_size_divisible_by * tp (Megatron)."""
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)


@dataclass
class ParallelConfig:
    """Parallel layout. World size = tp * pp * dp, rank order tp-dp-pp (tp fastest)."""

    tensor_model_parallel_size: int = 1
    """--tensor-model-parallel-size: tp, ranks that split each layer's matrices."""
    pipeline_model_parallel_size: int = 1
    """--pipeline-model-parallel-size: pp, ranks that hold consecutive layer ranges (stages)."""
    decoder_first_pipeline_num_layers: Optional[int] = None
    """--decoder-first-pipeline-num-layers: layers on the first stage (uneven split)."""
    decoder_last_pipeline_num_layers: Optional[int] = None
    """--decoder-last-pipeline-num-layers: layers on the last stage (uneven split)."""
    pipeline_schedule: str = field(default="1f1b", metadata={"choices": ("1f1b", "gpipe")})
    """--pipeline-schedule: 1f1b (memory bounded by pp) or gpipe (all forwards first)."""
    distributed_timeout_minutes: float = 10.0
    """--distributed-timeout-minutes: every collective and p2p fails after this long."""
    use_cpu_initialization: bool = False
    """--use-cpu-initialization: initialise full master weights on CPU, then shard (layout-independent)."""
    distributed_backend: Optional[str] = field(default=None, metadata={"choices": ("gloo", "nccl")})
    """--distributed-backend: gloo or nccl; default from the device (nccl on CUDA, gloo on CPU)."""
    ddp_bucket_size: int = 8 * 2**20
    """--ddp-bucket-size: gradient elements per data-parallel all-reduce bucket (smaller: earlier overlap)."""
    sim_link_bandwidth: Optional[str] = None
    """--sim-link-bandwidth: simulate inter-stage links of this rate (200mbit, 1gbit, or bits/s); off when unset."""
    sim_link_latency: Optional[str] = None
    """--sim-link-latency: one-way latency of the simulated links (50ms, 0.05s, or seconds)."""

    def __post_init__(self):
        from megaclap.parallel.simlink import parse_bandwidth, parse_latency
        if self.sim_link_bandwidth is not None:
            parse_bandwidth(self.sim_link_bandwidth)
        if self.sim_link_latency is not None:
            parse_latency(self.sim_link_latency)


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
    override_opt_param_scheduler: bool = field(default=False, metadata={"flag": "--override-opt_param-scheduler"})
    """--override-opt_param-scheduler: on resume, use this run's LR schedule flags instead of the checkpoint's."""
    use_checkpoint_opt_param_scheduler: bool = field(default=False,
                                                     metadata={"flag": "--use-checkpoint-opt_param-scheduler"})
    """--use-checkpoint-opt_param-scheduler: on resume, keep the checkpoint's LR schedule, ignoring the flags."""

    def __post_init__(self):
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise ValueError("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler "
                             "exclude each other: pass one")


@dataclass
class TrainConfig:
    """Batches, iterations, evaluation, logging and checkpoints."""

    micro_batch_size: int = field(default=4, metadata={"required": True})
    """--micro-batch-size: samples per microbatch per data-parallel rank."""
    global_batch_size: Optional[int] = None
    """--global-batch-size: samples per step over all dp ranks (default micro * dp)."""
    rampup_batch_size: Optional[List[int]] = field(default=None, metadata={"nargs": 3, "metavar": ("START", "INCR", "SAMPLES")})
    """--rampup-batch-size: global batch START, growing by INCR over SAMPLES samples to --global-batch-size."""
    step_batch_size_schedule: Optional[List[str]] = field(default=None, metadata={"nargs": "+", "metavar": "TOKENS:BATCH"})
    """--step-batch-size-schedule: global batch BATCH from TOKENS consumed tokens on, e.g. 0:16 2.4B:320 (one
    quoted string or several words)."""
    train_iters: Optional[int] = None
    """--train-iters: optimizer steps (this or --train-samples is required)."""
    train_samples: Optional[int] = None
    """--train-samples: train until this many samples are consumed (sample-based schedule)."""
    seed: int = 1234
    """--seed: weights, data order, dropout, codecs."""
    eval_interval: int = 1000
    """--eval-interval: validate every this many steps."""
    eval_iters: int = 10
    """--eval-iters: validation batches per evaluation."""
    full_validation: bool = False
    """--full-validation: every evaluation reads the whole validation split, the same samples in the
    same order each time (Megatron-LM's flag); --eval-iters then sizes only mock data's split
    (--eval-iters global batches). Whole global batches: the split's last < --global-batch-size
    samples are left out. Real data is read in file order, so every --seed sees the same tokens."""
    eval_interval_schedule: Optional[List[str]] = field(default=None,
                                                        metadata={"nargs": "+", "metavar": "STEP:INTERVAL"})
    """--eval-interval-schedule: validate every INTERVAL steps from step STEP on, e.g. 0:100 450:25
    (iterations 100, 200, 300, 400, 450, 475, ...); replaces --eval-interval."""
    log_interval: int = 10
    """--log-interval: steps between log lines."""
    tensorboard_dir: Optional[str] = None
    """--tensorboard-dir: TensorBoard event files (off when unset)."""
    save: Optional[str] = None
    """--save: checkpoint directory."""
    load: Optional[str] = None
    """--load: checkpoint directory to resume from."""
    save_interval: Optional[int] = None
    """--save-interval: steps between checkpoints."""
    finetune: bool = False
    """--finetune: load weights only and reset the iteration."""
    no_load_optim: bool = False
    """--no-load-optim: do not restore the optimizer."""
    no_load_rng: bool = False
    """--no-load-rng: do not restore RNG states."""
    exit_interval: Optional[int] = None
    """--exit-interval: stop (after saving) when iteration % this == 0."""
    overwrite_checkpoint: bool = False
    """--overwrite-checkpoint: allow --save into a directory whose tracker is at a later iteration (moves it back)."""
    verbose_errors: bool = False
    """--verbose-errors: print the traceback of a known error (corrupt data, bad checkpoint, full disk) too."""
    exit_duration_in_mins: Optional[float] = None
    """--exit-duration-in-mins: stop (after saving) once the run has lasted this long."""
    compile: bool = False
    """--compile: torch.compile each pipeline stage (off by default; eager where unsupported)."""
    timing_log_level: int = 0
    """--timing-log-level: 1 adds per-step phase times (forward, backward, encode+decode, p2p wait, dp all-reduce, optimizer) to the log."""

    def eval_due(self, iteration: int) -> bool:
        """Whether validation runs after `iteration` steps (--eval-interval-schedule or --eval-interval)."""
        start, interval = 0, self.eval_interval
        for step, every in parse_eval_schedule(self.eval_interval_schedule):
            if iteration >= step:
                start, interval = step, every
        return iteration > 0 and (iteration - start) % interval == 0


def parse_eval_schedule(items) -> list:
    """['0:100', '450:25'] -> [(0, 100), (450, 25)]; ValueError naming the flag on bad input."""
    out = []
    for item in items or []:
        try:
            step, every = (int(v) for v in str(item).split(":"))
        except ValueError:
            raise ValueError(f"--eval-interval-schedule {item!r}: expected STEP:INTERVAL, e.g. 0:100 450:25") from None
        if step < 0 or every < 1 or (out and step <= out[-1][0]):
            raise ValueError(f"--eval-interval-schedule {' '.join(map(str, items))}: steps must be >= 0 and "
                             "increasing, intervals >= 1")
        out.append((step, every))
    return out


@dataclass
class MegaclapConfig:
    """Everything a run needs; passed explicitly, never global."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    megatron_flags: dict = field(default_factory=dict)
    """Megatron-LM flags accepted with no effect here ({flag: value}, see megaclap/habit_flags.py)."""

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.parallel.tensor_model_parallel_size * self.parallel.pipeline_model_parallel_size)

    def num_microbatches(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)

    def validate(self, world_size: int) -> "MegaclapConfig":
        """Check every rule; fill derived defaults. Raises ConfigError naming the flag."""
        from megaclap.config_checks import validate_config
        validate_config(self, world_size)
        return self
