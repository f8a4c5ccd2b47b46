"""Command-line parsing with Megatron-LM flag names, generated from the config dataclasses.

Every section's flags come from flags.add_dataclass_args (help = the field docstring, defaults
from the dataclass), plus the Megatron-only flags of habit_flags.
"""
from __future__ import annotations

import argparse
import re
from typing import Optional, Sequence

from .compression import CompressionConfig, add_compression_args
from .data import DataConfig, add_data_args
from .errors import ConfigError
from .flags import add_dataclass_args, from_namespace, missing_required
from .habit_flags import add_habit_args, given_habit_flags
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .run import MegaclapConfig
from .train import TrainConfig

SECTIONS = (("model", ModelConfig), ("parallel", ParallelConfig), ("optim", OptimConfig), ("train", TrainConfig))
ALL_SECTIONS = SECTIONS + (("data", DataConfig), ("compression", CompressionConfig))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="megaclap GPT pretraining (Megatron-LM flag names)",
                                     allow_abbrev=False, exit_on_error=False)
    for name, cls in SECTIONS:
        add_dataclass_args(parser, cls, name)
    add_data_args(parser)
    add_compression_args(parser)
    add_habit_args(parser)
    return parser


def _value_error(e: argparse.ArgumentError) -> str:
    m = re.match(r"invalid choice: '?(.*?)'? \(choose from (.*)\)$", e.message)
    if m:
        choices = [c.strip(" '") for c in m.group(2).split(",")]
        return f"{e.argument_name} {m.group(1)!r} is not one of {choices}"
    return f"{e.argument_name}: {e.message}"


def parse_args(argv: Optional[Sequence[str]] = None) -> MegaclapConfig:
    """Parse Megatron-style flags into a MegaclapConfig (not yet validated: call .validate(world)).

    The model-size flags Megatron-LM requires are required here too (ConfigError when missing);
    the dataclasses keep defaults for library use."""
    try:
        ns, unknown = build_parser().parse_known_args(argv)
    except argparse.ArgumentError as e:   # a bad value (choices, type, missing value)
        raise ConfigError(_value_error(e)) from None
    if unknown:   # one line, not argparse's usage dump
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(f"unrecognized argument{plural} {' '.join(unknown)}: neither a megaclap nor a "
                          "Megatron-LM flag (--help lists megaclap's)")
    missing = [flag for _, cls in ALL_SECTIONS for flag in missing_required(cls, ns)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                          "(as in Megatron-LM: megaclap has no default model size)")
    try:
        parts = {name: from_namespace(cls, ns) for name, cls in ALL_SECTIONS}
        return MegaclapConfig(**parts, megatron_flags=given_habit_flags(ns))
    except ValueError as e:  # a section's own validation at construction
        raise ConfigError(str(e)) from None
