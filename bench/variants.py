"""The papers' variants beside this project's extensions, labelled (issue 21.2).

    python -m bench.variants [--steps 150] [--seeds 1 2 3] [--out bench/results/variants.json]

GPT-tiny (4 layers, h=64, seq 64, micro batch 4, global batch 16) at PP=2 (forked gloo ranks,
CPU) on a small corpus written here from the mock Markov chain (--train-samples-in-corpus
training samples), so a run of --steps steps makes several epochs and AQ-SGD runs in its own
multi-epoch setting. Compressed runs use hquant:2 for activations and hquant:4 for gradients;
Clapping compresses both directions (the paper's setting) unless the row says otherwise.
Every row runs with every seed in one invocation: final validation loss, mean over seeds with
a 95% t interval, and bytes sent per step relative to `none`. Labels and origins come from
megaclap/compression/variants.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import mean_interval, print_table, write_json  # noqa: E402
from megaclap.config import parse_args  # noqa: E402
from megaclap.compression.variants import variant_of  # noqa: E402
from megaclap.data.gpt_dataset import MockGPTDataset  # noqa: E402
from megaclap.data.indexed_dataset import IndexedDatasetBuilder  # noqa: E402
from tests.dist import run_ranks  # noqa: E402
from tests.train_utils import make_trainer  # noqa: E402

VOCAB, SEQ = 512, 64
MODEL = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", str(SEQ),
         "--max-position-embeddings", str(SEQ), "--vocab-size", str(VOCAB), "--micro-batch-size", "4",
         "--global-batch-size", "16", "--lr", "1e-3", "--lr-warmup-iters", "10", "--lr-decay-style", "cosine",
         "--use-cpu-initialization", "--pipeline-model-parallel-size", "2", "--eval-iters", "8",
         "--split", "90,10,0"]
CODECS = ["--pp-fwd-codec", "hquant:2", "--pp-bwd-codec", "hquant:4"]
LAZY = ["--lazy-sampling-prob", "0.5"]
RUNS = [
    ["--pp-compression-method", "none"],
    ["--pp-compression-method", "none", *LAZY],
    ["--pp-compression-method", "direct", *CODECS],
    ["--pp-compression-method", "clapping-fu", *CODECS, *LAZY],
    ["--pp-compression-method", "clapping-fc", *CODECS, *LAZY],
    ["--pp-compression-method", "clapping-fc", "--clapping-fc-init", "previous", *CODECS, *LAZY],
    ["--pp-compression-method", "aqsgd", *CODECS],
    ["--pp-compression-method", "aqsgd", *CODECS, *LAZY],
    ["--pp-compression-method", "clapping-fc", "--clapping-fc-init", "fresh-codec",
     "--clapping-fresh-codec", "hquant:4", *CODECS, *LAZY],
    ["--pp-compression-method", "clapping-fu", "--pp-bwd-compression-method", "direct", *CODECS, *LAZY],
]


def write_corpus(prefix: str, samples: int) -> None:
    """`samples` mock Markov-chain samples (train and valid share the chain) as a .bin/.idx pair."""
    tokens = MockGPTDataset(samples, SEQ, VOCAB, seed=99).get_batch(np.arange(samples))  # [n, s+1]
    builder = IndexedDatasetBuilder(prefix + ".bin", np.uint16)
    for row in tokens:
        builder.add_document(row)
    builder.finalize(prefix + ".idx")


def _worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    tr.gather_telemetry()
    val = tr.evaluate()
    if not tr.ps.is_last_stage:
        return None
    comm = tr.comm_total[0].tolist()  # boundary 0: [fwd, bwd] x [raw, payload, err, sends, ref]
    return {"val": val, "raw": comm[0][0] + comm[1][0], "payload": comm[0][1] + comm[1][1],
            "epochs": tr.data.train.consumed_samples / len(tr.data.train.dataset)}


def measure(steps: int, seeds: list, corpus_samples: int) -> list:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "corpus")
        write_corpus(prefix, corpus_samples)
        for flags in RUNS:
            argv = MODEL + ["--data-path", prefix, "--train-iters", str(steps), "--eval-interval", str(steps)] + flags
            cfg = parse_args(argv)
            label, origin = variant_of(cfg.compression, cfg.data)
            results = [[r for r in run_ranks(_worker, 2, argv + ["--seed", str(s)], steps, timeout_s=3600)
                        if r is not None][0] for s in seeds]
            rows.append({"variant": label, "origin": origin, "flags": " ".join(flags),
                         "val": mean_interval([r["val"] for r in results]),
                         "bytes_ratio": statistics.fmean(r["payload"] / r["raw"] for r in results),
                         "epochs": results[0]["epochs"], "per_seed": results})
            print(f"  {label}: val {rows[-1]['val'][0]:.4f}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--train-samples-in-corpus", type=int, default=600)
    ap.add_argument("--out", default="bench/results/variants.json")
    a = ap.parse_args(argv)
    rows = measure(a.steps, a.seeds, a.train_samples_in_corpus)
    print_table(f"GPT-tiny PP=2, {a.steps} steps, {a.train_samples_in_corpus}-sample corpus ({rows[0]['epochs']:.1f} "
                f"epochs at p=1), seeds {a.seeds}; hquant:2 fwd / hquant:4 bwd where compressed",
                ["variant", "origin", "val loss (mean +- 95%)", "bytes / raw"],
                [[r["variant"], r["origin"], f"{r['val'][0]:.4f} +- {r['val'][1]:.4f}", f"{r['bytes_ratio']:.3f}"]
                 for r in rows])
    write_json(a.out, {"steps": a.steps, "seeds": a.seeds, "corpus_samples": a.train_samples_in_corpus,
                       "model": MODEL, "rows": rows})


if __name__ == "__main__":
    main()
