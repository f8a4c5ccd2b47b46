"""Run configuration: nested dataclasses, Megatron-LM flag names, start-up validation.

Every check runs on every rank before any collective, so a bad flag gives each rank the
same one-line error that names the flag to change, instead of a hang.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Optional

from megaclap.compression.config import CompressionConfig, add_compression_args
from megaclap.data.config import DataConfig, add_data_args


class ConfigError(ValueError):
    """A flag has a bad value; the message names the flag to change."""


@dataclass
class ModelConfig:
    """Transformer shape and flavour (GPT-2: the defaults; Llama: RMSNorm + swiglu + rope + untied + no bias)."""

    num_layers: int = 2
    """--num-layers: transformer layers in the whole model."""
    hidden_size: int = 64
    """--hidden-size: model width h."""
    num_attention_heads: int = 4
    """--num-attention-heads: query heads."""
    ffn_hidden_size: Optional[int] = None
    """--ffn-hidden-size: MLP width; default 4h (with --swiglu, 8h/3 rounded down to a multiple of 64, as Megatron)."""
    num_query_groups: Optional[int] = None
    """--num-query-groups: key/value heads when --group-query-attention is set."""
    group_query_attention: bool = False
    """--group-query-attention: use num_query_groups key/value heads (GQA)."""
    seq_length: int = 128
    """--seq-length: tokens per sample."""
    max_position_embeddings: Optional[int] = None
    """--max-position-embeddings: size of the learned position table; default seq_length."""
    position_embedding_type: str = "learned_absolute"
    """--position-embedding-type: learned_absolute (GPT-2) or rope (Llama)."""
    rotary_base: float = 10000.0
    """--rotary-base: RoPE theta."""
    normalization: str = "LayerNorm"
    """--normalization: LayerNorm or RMSNorm."""
    norm_epsilon: float = 1e-5
    """--norm-epsilon: epsilon of the norm layers."""
    swiglu: bool = False
    """--swiglu: gated SiLU MLP instead of GELU."""
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
    recompute_granularity: Optional[str] = None
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
    """--tensor-model-parallel-size: tp."""
    pipeline_model_parallel_size: int = 1
    """--pipeline-model-parallel-size: pp."""
    decoder_first_pipeline_num_layers: Optional[int] = None
    """--decoder-first-pipeline-num-layers: layers on the first stage (uneven split)."""
    decoder_last_pipeline_num_layers: Optional[int] = None
    """--decoder-last-pipeline-num-layers: layers on the last stage (uneven split)."""
    pipeline_schedule: str = "1f1b"
    """--pipeline-schedule: 1f1b (memory bounded by pp) or gpipe (all forwards first)."""
    distributed_timeout_minutes: float = 10.0
    """--distributed-timeout-minutes: every collective and p2p fails after this long."""
    use_cpu_initialization: bool = False
    """--use-cpu-initialization: initialise full master weights on CPU, then shard (layout-independent)."""
    distributed_backend: Optional[str] = None
    """--distributed-backend: gloo or nccl; default from the device (nccl on CUDA, gloo on CPU)."""
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
    lr_decay_style: str = "cosine"
    """--lr-decay-style: constant, linear or cosine."""
    lr_warmup_iters: int = 0
    """--lr-warmup-iters: linear warmup steps."""
    lr_decay_iters: Optional[int] = None
    """--lr-decay-iters: decay horizon (default --train-iters)."""
    weight_decay: float = 0.01
    """--weight-decay: AdamW decoupled weight decay (not on biases and norms)."""
    adam_beta1: float = 0.9
    """--adam-beta1."""
    adam_beta2: float = 0.999
    """--adam-beta2."""
    adam_eps: float = 1e-8
    """--adam-eps."""
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


@dataclass
class TrainConfig:
    """Batches, iterations, evaluation, logging and checkpoints."""

    micro_batch_size: int = 4
    """--micro-batch-size: samples per microbatch per data-parallel rank."""
    global_batch_size: Optional[int] = None
    """--global-batch-size: samples per step over all dp ranks (default micro * dp)."""
    train_iters: int = 100
    """--train-iters: optimizer steps."""
    seed: int = 1234
    """--seed: weights, data order, dropout, codecs."""
    eval_interval: int = 1000
    """--eval-interval: validate every this many steps."""
    eval_iters: int = 10
    """--eval-iters: validation batches per evaluation."""
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


@dataclass
class MegaclapConfig:
    """Everything a run needs; passed explicitly, never global."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

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
