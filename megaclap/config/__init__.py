"""Run configuration, at the bottom of megaclap's import graph: it imports nothing else from
megaclap (tests/test_import_graph.py), and every other layer imports it.

    model.py parallel.py optim.py train.py data.py compression.py
                      one dataclass per section; each field's docstring is its --help text
    run.py            MegaclapConfig: the sections together; .validate(world_size)
    checks.py         validate_config: the start-up rules across sections, in a fixed order
    megatron.py       Megatron-LM rules: model shape, the schedule in samples, LR horizons
    habit_flags.py    Megatron-LM flags accepted with no effect, and features megaclap lacks
    megatron_flags.py every other Megatron-LM flag answered (no effect or refused), from the
                      shipped list megatron_flags.tsv (tools/megatron_flags.py regenerates it)
    megatron_answers.py  the answers: per flag, family and Megatron group, with reasons
    batch_schedule.py the global batch size as a function of consumed samples
    codec_spec.py     the grammar of codec specs (--pp-fwd-codec ...)
    units.py          link rates, delays and K/M/B/T counts
    flags.py          one argparse flag per dataclass field (the generated command line)
    arguments.py      build_parser / parse_args: every section, plus the habit flags
    errors.py         ConfigError (exit code 2 at the entry point)

A new flag is a documented field of its section's dataclass: the docstring after the field is
its help (`--flag: what it does.`), the default is the field's, `metadata` adds choices, nargs,
metavar, a different flag name or required. That is all `--help` needs. A check that reads
only the section goes in the section (`__post_init__`, or `validate` for data/compression);
a check across sections, or one that needs the world size, goes in checks.py
(Megatron-LM's own rules in megatron.py), with a one-line ConfigError naming the flag.
"""
from .arguments import build_parser, parse_args
from .compression import CompressionConfig
from .data import DataConfig
from .errors import ConfigError
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .run import MegaclapConfig
from .train import TrainConfig

__all__ = ["CompressionConfig", "ConfigError", "DataConfig", "MegaclapConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "TrainConfig", "build_parser", "parse_args"]
