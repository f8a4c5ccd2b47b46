"""Reshard a megaclap checkpoint to another tensor x pipeline parallel layout, offline on CPU.

    python tools/checkpoint/reshard.py --load-dir ckpt/tp2pp2 --save-dir ckpt/tp1pp4 \
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 4

Weights and Adam state are merged and re-cut; the LR schedule, loss scale, counters and
data cursor are kept, so training resumes with --load at the new layout.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megaclap.checkpoint.keymaps import ConversionError  # noqa: E402
from megaclap.config import ConfigError  # noqa: E402
from megaclap.errors import run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="reshard a megaclap checkpoint (tp x pp)", allow_abbrev=False)
    p.add_argument("--load-dir", required=True)
    p.add_argument("--save-dir", required=True)
    p.add_argument("--target-tensor-parallel-size", type=int, required=True)
    p.add_argument("--target-pipeline-parallel-size", type=int, required=True)
    p.add_argument("--no-optimizer", action="store_true", help="write weights only (drop Adam state)")
    p.add_argument("--overwrite", action="store_true",
                   help="write even when --save-dir's tracker is at a later iteration (moves it back)")
    return p


def _run(argv=None) -> None:
    from megaclap.checkpoint.reshard import reshard
    args = build_parser().parse_args(argv)
    tp, pp = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
    if os.path.realpath(args.save_dir) == os.path.realpath(args.load_dir):
        raise ConversionError(f"--save-dir {args.save_dir} is --load-dir: resharding in place would replace the "
                              "checkpoint's shards; write the new layout to another --save-dir")
    notes = reshard(args.load_dir, args.save_dir, tp, pp, keep_optimizer=not args.no_optimizer,
                    overwrite=args.overwrite)
    for note in notes:
        print(f" note: {note}")
    print(f"wrote tp={tp} pp={pp} checkpoint to {args.save_dir}", flush=True)


def main(argv=None) -> int:
    """_run with known problems as one line and exit code 2 (the traceback goes to a file)."""
    return run_tool("reshard", _run, argv, known=(ConversionError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
