"""Command-line parsing with Megatron-LM flag names, generated from the config dataclasses.

Every section's flags come from megaclap.flags.add_dataclass_args (help = the field docstring,
defaults from the dataclass), plus the Megatron-only flags of megaclap.habit_flags.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from megaclap.compression.config import CompressionConfig, add_compression_args
from megaclap.config import ConfigError, MegaclapConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig
from megaclap.data.config import DataConfig, add_data_args
from megaclap.flags import add_dataclass_args, from_namespace, missing_required
from megaclap.habit_flags import add_habit_args, given_habit_flags

SECTIONS = (("model", ModelConfig), ("parallel", ParallelConfig), ("optim", OptimConfig), ("train", TrainConfig))
ALL_SECTIONS = SECTIONS + (("data", DataConfig), ("compression", CompressionConfig))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="megaclap GPT pretraining (Megatron-LM flag names)",
                                     allow_abbrev=False)
    for name, cls in SECTIONS:
        add_dataclass_args(parser, cls, name)
    add_data_args(parser)
    add_compression_args(parser)
    add_habit_args(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> MegaclapConfig:
    """Parse Megatron-style flags into a MegaclapConfig (not yet validated: call .validate(world)).

    The model-size flags Megatron-LM requires are required here too (ConfigError when missing);
    the dataclasses keep defaults for library use."""
    ns = build_parser().parse_args(argv)
    missing = [flag for _, cls in ALL_SECTIONS for flag in missing_required(cls, ns)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required (as in Megatron-LM; megaclap has no default model size)")
    try:
        parts = {name: from_namespace(cls, ns) for name, cls in ALL_SECTIONS}
        return MegaclapConfig(**parts, megatron_flags=given_habit_flags(ns))
    except ValueError as e:  # a section's own validation at construction
        raise ConfigError(str(e)) from None
