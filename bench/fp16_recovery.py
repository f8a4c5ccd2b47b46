"""Which stateful settings an --fp16 run recovers from (issue 23.3): skipped steps per setting.

    python -m bench.fp16_recovery [--steps 60] [--out bench/results/fp16_recovery.json]

Tiny GPT (2 layers, h=32, seq 16, global batch 4) at PP=2, --fp16 from the default initial loss
scale 2^32 with --loss-scale-window 20, so the scale climbs into overflow again and again. Each
row compresses one direction with one method and codec (the other direction uncompressed or
direct). A setting recovers when its skips stop once the scale has settled, as `none`'s do; one
that cannot recover skips (almost) every step and its loss scale ends at the floor of 1. The
ones that cannot are refused at start-up (megaclap.config.compression.check_fp16_recovery);
this benchmark disables that check to show why.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import print_table, write_json  # noqa: E402
from tests.dist import run_ranks  # noqa: E402
from tests.train_utils import make_trainer, tiny_args  # noqa: E402

# (fwd method, bwd method, codec of the compressed direction)
ROWS = [("none", "none", "identity"), ("none", "ef", "randk:0.1"), ("none", "ef", "topk:0.1"),
        ("none", "ef", "quant:2"), ("direct", "ef21", "randk:0.1"), ("ef", "direct", "randk:0.1"),
        ("none", "ef", "randk:0.1:scale"), ("direct", "ef21", "randk:0.1:scale"),
        ("ef", "direct", "randk:0.1:scale")]


def _worker(rank, world, argv, steps):
    import megaclap.config.compression as compression_rules
    compression_rules.check_fp16_recovery = lambda *a, **k: None  # show what the start-up check refuses
    tr = make_trainer(rank, world, argv)
    skipped = [tr.train_step(tr.data.train.next_batch())["skipped"] for _ in range(steps)]
    return {"skipped": skipped, "scale": tr.scaler.scale}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="bench/results/fp16_recovery.json")
    a = ap.parse_args(argv)
    rows = []
    for fwd, bwd, codec in ROWS:
        flags = ["--pipeline-model-parallel-size", "2", "--fp16", "--loss-scale-window", "20",
                 "--pp-compression-method", fwd, "--pp-bwd-compression-method", bwd,
                 "--pp-fwd-codec", codec if fwd not in ("none", "direct") else "identity",
                 "--pp-bwd-codec", codec if bwd not in ("none", "direct") else "identity",
                 "--train-iters", str(a.steps)]
        if fwd == "direct":
            flags[flags.index("--pp-fwd-codec") + 1] = "quant:8"
        if bwd == "direct":
            flags[flags.index("--pp-bwd-codec") + 1] = "quant:8"
        res = run_ranks(_worker, 2, tiny_args(layers=2, gbs=4, extra=flags), a.steps)[1]
        rows.append({"fwd": fwd, "bwd": bwd, "codec": codec, "skipped": sum(res["skipped"]),
                     "pattern": "".join("S" if s else "." for s in res["skipped"]), "final_scale": res["scale"]})
    print_table(f"--fp16 PP=2, {a.steps} steps, initial scale 2^32, --loss-scale-window 20 (S = skipped step)",
                ["fwd / bwd method", "codec", "skipped", "final loss scale", "steps"],
                [[f"{r['fwd']} / {r['bwd']}", r["codec"], r["skipped"], f"{r['final_scale']:g}", f"`{r['pattern']}`"]
                 for r in rows])
    write_json(a.out, {"steps": a.steps, "rows": rows})


if __name__ == "__main__":
    main()
