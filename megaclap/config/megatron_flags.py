"""Every Megatron-LM flag megaclap does not implement, answered: accepted with no effect (one
start-up line) or refused (one line naming the flag, its Megatron-LM group and what megaclap
offers instead).

The flags are data: `megatron_flags.tsv`, read from Megatron-LM's own parser by
tools/megatron_flags.py (its header names the Megatron commit). `habit_flags.py` answers the
common ones with their own --help lines; this module answers the rest, which --help sums up in
one line. An answer is looked up in the tables of megatron_answers.py, in order: SPECIFIC
(one flag), FAMILY_GROUPS (a Megatron group that is one family), FAMILIES (a name pattern),
GROUPS (the rest of a Megatron group). An alternative spelling (`--disable-x` for `--no-x`)
answers as the flag it spells. A flag none of them names is refused
(tests/test_megatron_flag_list.py checks that none is, so a regenerated list with new groups
asks for a decision).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from .megatron_answers import (FAMILIES, FAMILY_GROUPS, GROUPS, NO_EFFECT, REFUSED,  # noqa: F401
                               SPECIFIC)

TSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_flags.tsv")


@dataclass(frozen=True)
class MegatronFlag:
    """One option string of Megatron-LM's parser."""

    flag: str
    group: str
    nargs: str       # "0" (a switch), "1", "N", "?", "*" or "+"
    alias_of: str    # the first option string of the same argparse action ("" for that one)


@functools.lru_cache(maxsize=None)
def megatron_flags() -> dict:
    """{flag: MegatronFlag} of the shipped list."""
    out = {}
    with open(TSV) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                flag, group, nargs, alias = (line.rstrip("\n").split("\t") + [""])[:4]
                out[flag] = MegatronFlag(flag, group, nargs, alias)
    return out


def source() -> str:
    """The list's 'Read from' header line: the Megatron-LM commit and version."""
    with open(TSV) as f:
        for line in f:
            if line.startswith("# Read from "):
                return line[len("# Read from "):].strip()
    return "unknown"


def answer(flag: str) -> tuple:
    """(NO_EFFECT or REFUSED, reason, values at which it does nothing) for a listed flag that
    megaclap does not implement; KeyError for a flag not in the list."""
    entry = megatron_flags()[flag]
    name = entry.alias_of or flag   # --disable-x answers as --no-x
    if name in SPECIFIC:
        kind, reason, *noop = SPECIFIC[name]
        return kind, reason, noop[0] if noop else set()
    if entry.group in FAMILY_GROUPS:
        return (*FAMILY_GROUPS[entry.group], set())
    for pattern, kind, reason in FAMILIES:
        if re.search(pattern, name):
            return kind, reason, set()
    if entry.group in GROUPS:
        return (*GROUPS[entry.group], set())
    return REFUSED, f"not implemented in megaclap (Megatron-LM's {entry.group} options)", set()
