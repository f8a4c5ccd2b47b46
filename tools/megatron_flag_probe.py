"""Probe how megaclap answers Megatron-LM's flags: implemented, no effect, refused or unknown.

    python tools/megatron_flag_probe.py                  # every flag of the shipped list, counted
    python tools/megatron_flag_probe.py --list           # ... and each flag with its answer
    python tools/megatron_flag_probe.py --megatron-root /path/to/Megatron-LM --sample 120 --seed 7

The shipped list is megaclap/config/megatron_flags.tsv (tools/megatron_flags.py extracts it).
With --megatron-root the flags come from Megatron-LM's own parser instead: a subprocess imports
that checkout's megatron/training/arguments.py and builds its parser (Megatron's optional
dependencies that are missing here, e.g. triton, are stubbed for Megatron's own imports only),
and the probe also reports any flag of that parser missing from the shipped list. --sample N
draws N of its argparse actions with random.Random(seed).sample, in the parser's order, after
leaving out MoE, inference, BERT/T5 and vision: the actions of the groups `moe`, `inference`,
`vision` and `biencoder`, and every action with an option string containing "moe", "expert",
"inference", "bert" or "t5". Each drawn action is probed by its first option string.

Each flag is parsed with a plausible value (`VALUE` per value, none for a switch) on top of a
minimal model command line, then validated at world size 1:
    implemented   a megaclap flag (a config field)
    no effect     accepted; one start-up line says why (megaclap/config/habit_flags.py)
    refused       one ConfigError line naming the flag, its Megatron group and what to do instead
    unknown       neither megaclap's nor in the shipped list (an error, one line)
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "16", "--vocab-size", "100", "--micro-batch-size", "2", "--mock-data",
        "--train-iters", "4"]
LEFT_OUT_GROUPS = ("moe", "inference", "vision", "biencoder")
LEFT_OUT_NAMES = re.compile(r"moe|expert|inference|bert|t5")
KINDS = ("implemented", "no effect", "refused", "unknown")

# Builds Megatron-LM's own parser from a checkout and prints its actions as JSON (run in a
# subprocess; Megatron's code is imported from the checkout, never copied).
_MEGATRON_PARSER = r'''
import argparse, importlib.abc, importlib.machinery, json, sys, types, typing
from unittest import mock
root, stubs = sys.argv[1], set(sys.argv[2].split(","))
import torch, torch.utils._triton
torch.utils._triton.has_triton_package()        # torch caches "no triton" before any stub exists
for name in ("torch.utils.flop_counter", "torch._inductor.utils", "torch._dynamo",
             "torch._functorch.aot_autograd", "torch._inductor.codecache",
             "torch._inductor.runtime.triton_compat", "torch._inductor.compile_fx", "torch._inductor.ir"):
    __import__(name)
if not hasattr(typing, "override"):             # Python < 3.12
    typing.override = lambda f: f
class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A missing optional package, for imports made by Megatron's own files only."""
    def find_spec(self, name, path, target=None):
        f = sys._getframe(1)
        while f and f.f_code.co_filename.startswith("<frozen"):
            f = f.f_back
        if name.split(".")[0] in stubs and f and f.f_code.co_filename.startswith(root):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        m = mock.MagicMock(name=spec.name)
        m.__path__, m.__spec__, m.__name__, m.__version__ = [], spec, spec.name, "3.4.0"
        return m
    def exec_module(self, module):
        pass
sys.meta_path.append(Stubs())
sys.path.insert(0, root)
from megatron.training.arguments import add_megatron_arguments
parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
zero = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
        argparse._CountAction, argparse.BooleanOptionalAction)
out = [{"flags": a.option_strings, "group": g.title,
        "nargs": 0 if isinstance(a, zero) else (a.nargs or 1)}
       for g in parser._action_groups for a in g._group_actions if "-h" not in a.option_strings]
print("MEGATRON_ACTIONS " + json.dumps(out))
'''


def megatron_actions(root: str, stubs: str = "triton") -> list:
    """[{flags, group, nargs}] of Megatron-LM's own parser, built from a checkout in a subprocess."""
    r = subprocess.run([sys.executable, "-c", _MEGATRON_PARSER, os.path.abspath(root), stubs],
                       capture_output=True, text=True, timeout=900)
    for line in r.stdout.splitlines():
        if line.startswith("MEGATRON_ACTIONS "):
            return json.loads(line[len("MEGATRON_ACTIONS "):])
    raise SystemExit(f"megatron_flag_probe: could not build Megatron-LM's parser from {root}:\n"
                     + "\n".join(r.stderr.splitlines()[-5:]))


def shipped_actions() -> list:
    """The shipped list, one entry per option string."""
    from megaclap.config.megatron_flags import megatron_flags
    return [{"flags": [m.flag], "group": m.group, "nargs": m.nargs}
            for m in megatron_flags().values()]


def left_out(action: dict) -> bool:
    return (action["group"] in LEFT_OUT_GROUPS
            or any(LEFT_OUT_NAMES.search(f) for f in action["flags"]))


def sample_values(nargs) -> list:
    nargs = str(nargs)
    if nargs in ("0", "?", "*"):
        return []
    return ["VALUE"] * (int(nargs) if nargs.isdigit() else 1)


def classify(flag: str, nargs, parser) -> tuple:
    """(kind, the one line megaclap prints about the flag, or '')."""
    from megaclap.config import ConfigError, parse_args
    from megaclap.config.habit_flags import habit_notes
    action = parser._option_string_actions.get(flag)
    if action is None:
        return "unknown", ""
    if not action.dest.startswith("megatron_"):
        return "implemented", ""
    try:
        cfg = parse_args(BASE + [flag] + sample_values(nargs)).validate(1)
    except ConfigError as e:
        return ("refused" if str(e).startswith(flag) else "bad sample value"), str(e)
    notes = [n for n in habit_notes(cfg.megatron_flags) if n.startswith(f" > {flag}")]
    return ("no effect" if len(notes) == 1 else "bad sample value"), "\n".join(notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megatron-root", help="probe the flags of this Megatron-LM checkout's parser")
    ap.add_argument("--sample", type=int,
                    help="probe this many actions (MoE/inference/BERT/T5/vision left out)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--list", action="store_true", help="print every probed flag and its answer")
    args = ap.parse_args(argv)
    from megaclap.config import build_parser
    from megaclap.config.megatron_flags import megatron_flags
    parser = build_parser()
    actions = megatron_actions(args.megatron_root) if args.megatron_root else shipped_actions()
    if args.megatron_root:
        absent = [f for a in actions for f in a["flags"] if f not in megatron_flags()]
        strings = sum(len(a["flags"]) for a in actions)
        print(f"Megatron-LM's parser: {len(actions)} actions, {strings} option strings; "
              f"not in the shipped list: {absent or 'none'}")
    pool = actions
    if args.sample:
        pool = [a for a in actions if not left_out(a)]
        print(f"left out (MoE, inference, BERT/T5, vision): {len(actions) - len(pool)}; "
              f"drawing {args.sample} of {len(pool)} with seed {args.seed}")
        pool = random.Random(args.seed).sample(pool, args.sample)
    answers = {a["flags"][0]: classify(a["flags"][0], a["nargs"], parser) for a in pool}
    counts = collections.Counter(kind for kind, _ in answers.values())
    shown = [k for k in KINDS + ("bad sample value",) if counts[k] or k in KINDS]
    print(f"{len(answers)} flags: " + ", ".join(f"{counts[k]} {k}" for k in shown))
    for flag, (kind, line) in answers.items():
        if args.list or kind in ("unknown", "bad sample value"):
            print(f"  {kind:11s} {flag}" + (f"\n      {line.strip()}" if line else ""))
    return 1 if counts["unknown"] else 0


if __name__ == "__main__":
    sys.exit(main())
