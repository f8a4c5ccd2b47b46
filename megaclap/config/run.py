"""MegaclapConfig: every section of a run in one object, passed explicitly (never global)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .checks import validate_config
from .compression import CompressionConfig
from .data import DataConfig
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .train import TrainConfig


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
    """Megatron-LM flags accepted with no effect here ({flag: value}, see megaclap/config/habit_flags.py)."""

    def data_parallel_size(self, world_size: int) -> int:
        """dp from the number of processes (with --pp-emulate, each holds a whole pipeline)."""
        p = self.parallel
        grid = p.grid_world_size(world_size)
        return grid // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size)

    def num_microbatches(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)

    def validate(self, world_size: int) -> "MegaclapConfig":
        """Check every rule; fill derived defaults. Raises ConfigError naming the flag."""
        validate_config(self, world_size)
        return self
