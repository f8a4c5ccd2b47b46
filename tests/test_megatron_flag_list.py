"""Every Megatron-LM flag is answered: the shipped list (megaclap/config/megatron_flags.tsv) is
accepted by the parser, each flag implemented, reported once at start-up (no effect) or refused
in one line naming its Megatron group; unknown flags are one line; the extractor that writes the
list follows Megatron's parser rules (checked on a miniature Megatron tree)."""
from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
import textwrap

import pytest

from megaclap.config import ConfigError, build_parser, parse_args
from megaclap.config.habit_flags import MISSING, NO_EFFECT, habit_notes
from megaclap.config.megatron_flags import NO_EFFECT as NONE, REFUSED, answer, megatron_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "100", "--micro-batch-size", "2", "--mock-data", "--train-iters", "4"]


def plausible(flag: str, nargs: str, parser) -> list:
    """A value argparse takes for the flag: a choice, a number for a typed flag, else a word."""
    action = parser._option_string_actions[flag]
    if nargs in ("0", "?", "*") or action.nargs == 0:
        return []
    value = str(action.choices[0]) if action.choices else "1" if action.type in (int, float) else "x"
    return [value] * (int(nargs) if nargs.isdigit() else 1)


def test_a_sample_of_the_list_is_answered_in_one_line():
    parser = build_parser()
    flags = megatron_flags()
    for flag in random.Random(0).sample(sorted(flags), 80):
        hidden = parser._option_string_actions[flag].dest.startswith("megatron_")   # KeyError: unknown
        argv = BASE + [flag] + plausible(flag, flags[flag].nargs, parser)
        try:
            cfg = parse_args(argv).validate(1)
        except ConfigError as e:
            message = str(e)
            assert "\n" not in message and "unrecognized" not in message, (flag, message)
            if hidden:   # a refusal names the flag and its Megatron group
                group = f'(Megatron-LM group "{flags[flag].group}")'
                assert message.startswith(flag) and group in message, message
            continue
        notes = [n for n in habit_notes(cfg.megatron_flags) if n.startswith(f" > {flag}")]
        expected = 1 if hidden or flag in NO_EFFECT or flag in MISSING else 0
        assert len(notes) == expected, (flag, notes)
        if hidden and flag not in NO_EFFECT and flag not in MISSING:
            noop = notes[0].endswith("a no-op at this value, as in Megatron-LM")
            assert answer(flag)[0] == NONE or noop, notes


def test_every_listed_flag_has_a_deliberate_answer():
    parser = build_parser()
    for flag, m in megatron_flags().items():
        action = parser._option_string_actions[flag]
        if action.dest.startswith("megatron_") and flag not in NO_EFFECT and flag not in MISSING:
            kind, reason, _ = answer(flag)
            generic = reason.startswith("not implemented in megaclap (")
            assert kind in (NONE, REFUSED) and not generic, flag


def test_spellings_of_implemented_flags_are_implemented_and_old_ones_kept():
    parser = build_parser()
    acts = parser._option_string_actions
    for flag, m in megatron_flags().items():
        if m.alias_of and not acts[m.alias_of].dest.startswith("megatron_"):
            assert acts[flag] is acts[m.alias_of], flag   # e.g. --persistent-save-interval
    cfg = parse_args(BASE + ["--persistent-save-interval", "3", "--override-opt-param-scheduler"])
    assert cfg.train.save_interval == 3 and cfg.optim.override_opt_param_scheduler
    old = ["--overlap-p2p-communication", "--use-legacy-models",
           "--no-async-tensor-model-parallel-allreduce", "--barrier-with-L1-time"]
    assert not any(f in megatron_flags() for f in old)   # gone from Megatron, kept here
    assert len(habit_notes(parse_args(BASE + old).validate(1).megatron_flags)) == 4


@pytest.mark.parametrize("flags,note", [(["--softmax-type", "vanilla"], "a no-op at this value"),
                                        (["--no-overlap-p2p-communication"], "not overlapped"),
                                        (["--disable-tp-comm-overlap-ag"], "not overlapped with GEMMs")])
def test_no_effect_and_noop_values_are_reported(flags, note):
    notes = habit_notes(parse_args(BASE + flags).validate(1).megatron_flags)
    assert len(notes) == 1 and note in notes[0]


@pytest.mark.parametrize("flags,match", [
    (["--softmax-type", "off-by-one"], 'softmax-type off-by-one .Megatron-LM group "transformer configuration".'),
    (["--use-mup"], "muP is not implemented"),
    (["--rl-inference-parsers", "a", "b"], 'group "rl".: reinforcement learning'),
    (["--fim-data"], "fill-in-the-middle"),
    (["--recompute-modules", "core_attn"], "use --recompute-granularity full"),
])
def test_refusals_name_flag_group_and_alternative(flags, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(BASE + flags).validate(1)


def test_unknown_flag_is_one_line_without_usage():
    with pytest.raises(ConfigError, match="unrecognized argument --no-such-flag: neither a megaclap nor"):
        parse_args(BASE + ["--no-such-flag"])
    script = "examples/pretrain_gpt/pretrain_gpt.py"
    out = subprocess.run([sys.executable, script, *BASE, "--no-such-flag", "3"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "" and "usage" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--no-such-flag 3" in out.stderr


def test_help_sums_up_the_hidden_flags():
    text = build_parser().format_help()
    hidden = [f for f, a in build_parser()._option_string_actions.items()
              if a.dest.startswith("megatron_") and f not in NO_EFFECT and f not in MISSING]
    shown = set(re.findall(r"(?<![\w-])(--[\w-]+)", text))
    assert len(hidden) > 600 and not shown & set(hidden)
    assert f"The other {len(hidden)} flags of Megatron-LM's parser" in " ".join(text.split())


# --- the extractor ---------------------------------------------------------------------------------
MINI_ARGUMENTS = '''
    import argparse
    from megatron.core.cfg import MiniConfig

    def _add_network_size_args(parser):
        exclude = ["skipped"]
        factory = ArgumentGroupFactory(MiniConfig, exclude=exclude)
        group = factory.build_group(parser, "transformer configuration")
        group.add_argument('--extra-value', type=int, nargs='+')
        return parser

    def _add_rl_args(parser):
        group = parser.add_argument_group(title='rl')
        group.add_argument('--rl-switch', action=argparse.BooleanOptionalAction, default=False)
        sub = group.add_mutually_exclusive_group()
        sub.add_argument('--a', '--a-alias', action='store_true')
        return parser
'''
MINI_CONFIG = '''
    from dataclasses import dataclass, field
    from typing import Optional

    @dataclass
    class BaseConfig:
        tensor_model_parallel_size: int = 1

    @dataclass
    class MiniConfig(BaseConfig):
        num_layers: int = 0
        bias: bool = True
        maybe: Optional[bool] = None
        quiet: bool = False
        sizes: Optional[list[int]] = None
        renamed: bool = field(default=False, metadata={"argparse_meta": {"arg_names": ["--apply-x-1p"]}})
        derived: int = field(init=False, default=0)
        skipped: int = 3
'''


def test_extractor_follows_megatrons_naming_rules(tmp_path):
    version = "MAJOR = 0\nMINOR = 20\nPATCH = 0\nPRE_RELEASE = ''\n"
    for rel, text in (("megatron/training/arguments.py", MINI_ARGUMENTS), ("megatron/core/cfg.py", MINI_CONFIG),
                      ("megatron/core/package_info.py", version)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    path = os.path.join(REPO, "tools", "megatron_flags.py")
    spec = importlib.util.spec_from_file_location("megatron_flags_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(tmp_path), "--out", str(tmp_path / "flags.tsv")]) == 0
    lines = (tmp_path / "flags.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line[0] != "#"]
    t, rl = "transformer configuration", "rl"
    assert rows == [
        ["--tensor-model-parallel-size", t, "1", ""], ["--num-layers", t, "1", ""], ["--no-bias", t, "0", ""],
        ["--disable-bias", t, "0", "--no-bias"], ["--no-maybe", t, "0", ""], ["--disable-maybe", t, "0", "--no-maybe"],
        ["--quiet", t, "0", ""], ["--sizes", t, "+", ""], ["--apply-x-1p", t, "0", ""], ["--extra-value", t, "+", ""],
        ["--rl-switch", rl, "0", ""], ["--no-rl-switch", rl, "0", ""], ["--a", rl, "0", ""], ["--a-alias", rl, "0", "--a"]]
    assert "megatron.core 0.20.0" in (tmp_path / "flags.tsv").read_text().splitlines()[2]


def test_no_answer_table_names_a_flag_megaclap_implements():
    """A flag that gains an implementation (another branch, a merge) leaves its answer stale."""
    from megaclap.config.megatron_answers import SPECIFIC
    acts = build_parser()._option_string_actions
    stale = [f for f in SPECIFIC
             if f not in megatron_flags() or not acts[f].dest.startswith("megatron_")]
    assert not stale, stale
