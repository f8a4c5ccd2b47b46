"""Command-line parsing with Megatron-LM flag names, generated from the config dataclasses."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Optional, Sequence

from megaclap.compression.config import add_compression_args
from megaclap.config import ConfigError, MegaclapConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig
from megaclap.data.config import DataConfig, add_data_args
from megaclap.compression.config import CompressionConfig

SECTIONS = (("model", ModelConfig), ("parallel", ParallelConfig), ("optim", OptimConfig), ("train", TrainConfig))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_section(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        typ = _base_type(hints[f.name])
        flag = f.metadata.get("flag", _flag(f.name))
        if typ is bool:
            group.add_argument(flag, dest=f.name, action="store_true")
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="megaclap GPT pretraining (Megatron-LM flag names)",
                                     allow_abbrev=False)
    for _, cls in SECTIONS:
        _add_section(parser, cls)
    add_data_args(parser)
    add_compression_args(parser)
    return parser


def _fill(cls, ns: argparse.Namespace):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if hasattr(ns, f.name):
            value = getattr(ns, f.name)
            if value is not None:  # unset flags keep the dataclass default
                kwargs[f.name] = value
    return cls(**kwargs)


def parse_args(argv: Optional[Sequence[str]] = None) -> MegaclapConfig:
    """Parse Megatron-style flags into a MegaclapConfig (not yet validated: call .validate(world))."""
    ns = build_parser().parse_args(argv)
    try:
        parts = {name: _fill(cls, ns) for name, cls in SECTIONS}
        return MegaclapConfig(data=_fill(DataConfig, ns), compression=_fill(CompressionConfig, ns), **parts)
    except ValueError as e:  # a section's own validation at construction
        raise ConfigError(str(e)) from None
