"""Data pipeline benchmark: preprocessing throughput and memory, loader speed and memory,
index build time.

    python -m bench.data [--quick] [--out bench/results/data.json] [--workdir DIR]

(1) Preprocessing (tools/preprocess_data.py, sentencepiece BPE trained here) of a jsonl
    corpus made of the Python standard library's .py sources (one file per document),
    repeated to ~100 MB: MB/s of text with 1 and 2 workers, and the peak RSS of the main
    process and of a worker for 10 MB vs 100 MB of input (streaming: should be flat).
(2) Loader: train-split samples/s at seq 1024 (global batch 64, few-epoch random order)
    from a synthetic 2 GB (1e9 uint16 tokens) .bin, and the loader's peak RSS there vs. a
    10 MB one (index cached beforehand; tokens read with pread, so no memmap growth).
(3) Index build (document shuffle + sample index, numpy) over those 1e9 tokens.
Every measurement runs in a fresh child process (`--child`), so RSS figures are its own.
--quick shrinks everything (~5/20 MB corpora, 10 MB vs 200 MB data) for a smoke run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time

import numpy as np

MB = 1 << 20


def _documents(max_doc=64 * 1024):
    """Stdlib .py sources, one document per file; files over max_doc bytes are cut at line
    boundaries, so a 10 MB and a 100 MB corpus have the same largest document."""
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, _, files in sorted(os.walk(root)):
        if "site-packages" in dirpath:
            continue
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    text = fh.read()
            except (UnicodeDecodeError, OSError):
                continue
            while text:
                cut = text.rfind("\n", 0, max_doc) + 1 if len(text) > max_doc else len(text)
                yield text[:cut or max_doc]
                text = text[cut or max_doc:]


def build_corpus(path, size):
    """jsonl of stdlib sources as {"text": ...} lines, repeated to `size` bytes."""
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return path
    lines = [json.dumps({"text": d}) + "\n" for d in _documents()]
    written = 0
    with open(path, "w") as out:
        while written < size:
            for line in lines:
                out.write(line)
                written += len(line.encode())
                if written >= size:
                    break
    return path


def write_synthetic(prefix, num_tokens, seed=0):
    """A .bin/.idx of exactly num_tokens uint16 tokens in documents of 1..2047 tokens."""
    from megaclap.data.indexed_dataset import write_index

    if os.path.exists(prefix + ".idx") and os.path.getsize(prefix + ".bin") == 2 * num_tokens:
        return prefix
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 2048, num_tokens // 1000 + 16).astype(np.int64)
    ends = np.cumsum(lengths)
    n = int(np.searchsorted(ends, num_tokens))          # docs [0, n] cover num_tokens
    lengths = lengths[:n + 1]
    lengths[-1] -= int(ends[n]) - num_tokens
    chunk = (np.arange(32 * MB, dtype=np.int64) * 7919 % 32000).astype(np.uint16)
    with open(prefix + ".bin", "wb") as f:
        left = num_tokens
        while left:
            part = chunk[:min(left, len(chunk))]
            f.write(part.tobytes())
            left -= len(part)
    write_index(prefix + ".idx", np.uint16, lengths.astype(np.int32), np.arange(n + 2))
    return prefix


def _maxrss_mb(who):
    """Peak RSS in MB. For this process: VmHWM, since getrusage(RUSAGE_SELF) would carry
    the parent's peak across fork + exec; for reaped (forked) workers: their maximum."""
    if who == resource.RUSAGE_SELF:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(who).ru_maxrss / 1024   # Linux: KiB


def _cpu_s(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def child_preprocess(a):
    """Preprocess a corpus in this process (workers forked from it); report speed, CPU, RSS."""
    from tools.preprocess_data import get_args, preprocess

    args = get_args(["--input", a["input"], "--output-prefix", a["output"], "--workers",
                     str(a["workers"]), "--tokenizer-type", "SentencePieceTokenizer",
                     "--tokenizer-model", a["model"], "--append-eod", "--log-interval", "0"])
    s = preprocess(args)
    cpu = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
    return {"mb_per_s": s["bytes"] / MB / s["seconds"], "seconds": s["seconds"],
            "cpu_s": cpu, "mb": s["bytes"] / MB, "main_rss_mb": _maxrss_mb(resource.RUSAGE_SELF),
            "worker_rss_mb": _maxrss_mb(resource.RUSAGE_CHILDREN) if a["workers"] > 1 else None}


def child_index(a):
    """Time the in-memory index build, then write the cache the loader runs use."""
    from megaclap.data.gpt_dataset import build_split_dataset

    start = time.perf_counter()
    ds = build_split_dataset(a["prefix"], "1,0,0", 0, 1024, seed=0)
    seconds = time.perf_counter() - start
    build_split_dataset(a["prefix"], "1,0,0", 0, 1024, seed=0, cache_dir=a["cache"])
    return {"seconds": seconds, "samples": len(ds), "tokens": ds.indexed.num_tokens,
            "documents": ds.indexed.num_documents}


def child_loader(a):
    """Read `batches` global batches of 64 x 1025 tokens from a cached index; speed + RSS."""
    import torch  # noqa: F401  (the trainer has it loaded too: part of the baseline)

    from megaclap.config import DataConfig
    from megaclap.data import build_data_sources

    base = _maxrss_mb(resource.RUSAGE_SELF)
    cfg = DataConfig(data_path=[a["prefix"]], split="1,0,0", data_cache_path=a["cache"])
    src = build_data_sources(cfg, seq_length=1024, micro_batch_size=8, global_batch_size=64,
                             seed=0).train
    assert src.dataset.cache_hit, "index cache should be warm"
    src.next_batch()
    start = time.perf_counter()
    for _ in range(a["batches"]):
        src.next_batch()
    seconds = time.perf_counter() - start
    peak = _maxrss_mb(resource.RUSAGE_SELF)
    return {"samples_per_s": a["batches"] * 64 / seconds, "peak_rss_mb": peak,
            "rss_above_imports_mb": peak - base}


CHILDREN = {"preprocess": child_preprocess, "index": child_index, "loader": child_loader}


def run_child(mode, **kw):
    cmd = [sys.executable, "-m", "bench.data", "--child", mode, json.dumps(kw)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args):
    """All measurements; returns the result dict."""
    w = args.workdir
    os.makedirs(w, exist_ok=True)
    small_mb, big_mb = (5, 20) if args.quick else (10, 100)
    data_small, data_big = (10 * MB, 200 * MB) if args.quick else (10 * MB, 2048 * MB)
    res = {"quick": args.quick, "cpus": os.cpu_count()}
    corpus = {n: build_corpus(os.path.join(w, f"corpus_{n}mb.jsonl"), n * MB)
              for n in (small_mb, big_mb)}
    from tools.train_tokenizer import main as train_tokenizer

    start = time.perf_counter()
    model = train_tokenizer(["--input", corpus[small_mb], "--vocab-size", "4096",
                             "--max-sentences", "200000", "--output-prefix",
                             os.path.join(w, "tok")])
    res["tokenizer_train_s"] = time.perf_counter() - start
    pre = {}
    for n, workers in ((big_mb, 1), (big_mb, 2), (small_mb, 2)):
        runs = [run_child("preprocess", input=corpus[n], workers=workers, model=model,
                          output=os.path.join(w, f"pre_{n}_{workers}"))
                for _ in range(args.repeats if n == big_mb else 1)]
        pre[f"{n}mb_w{workers}"] = max(runs, key=lambda r: r["mb_per_s"])   # best of repeats
    res["preprocess"] = pre
    res["load_average"] = os.getloadavg()
    res["loader"], res["index"] = {}, None
    for name, size in (("small", data_small), ("big", data_big)):
        prefix = write_synthetic(os.path.join(w, f"synthetic_{size // MB}mb"), size // 2)
        cache = os.path.join(w, "cache")
        index = run_child("index", prefix=prefix, cache=cache)
        if name == "big":
            res["index"] = index
        res["loader"][name] = {"mb": size / MB, **run_child("loader", prefix=prefix, cache=cache,
                                                           batches=50 if args.quick else 200)}
    return res


def table(res):
    """Rows (metric, value, check) for printing."""
    pre, ld, idx = res["preprocess"], res["loader"], res["index"]
    keys = sorted(pre, key=lambda k: (int(k.split("mb")[0]), k))
    (small,), big_w = [k for k in keys if k.endswith("w2")][:1], [k for k in keys if k.endswith("w2")][-1]
    big_w1 = [k for k in keys if k.endswith("w1")][0]
    d_main = pre[big_w]["main_rss_mb"] - pre[small]["main_rss_mb"]
    d_worker = pre[big_w]["worker_rss_mb"] - pre[small]["worker_rss_mb"]
    d_loader = ld["big"]["peak_rss_mb"] - ld["small"]["peak_rss_mb"]
    return [
        ("tokenizer training (sentencepiece bpe 4096)", f"{res['tokenizer_train_s']:.1f} s", ""),
        (f"preprocess {pre[big_w1]['mb']:.0f} MB, 1 worker", f"{pre[big_w1]['mb_per_s']:.2f} MB/s",
         f"{pre[big_w1]['mb'] / pre[big_w1]['cpu_s']:.2f} MB per CPU-s"),
        (f"preprocess {pre[big_w]['mb']:.0f} MB, 2 workers", f"{pre[big_w]['mb_per_s']:.2f} MB/s",
         f"x{pre[big_w]['mb_per_s'] / pre[big_w1]['mb_per_s']:.2f} wall; "
         f"{pre[big_w]['mb'] / pre[big_w]['cpu_s']:.2f} MB per CPU-s"),
        (f"preprocess peak RSS main, {pre[small]['mb']:.0f} vs {pre[big_w]['mb']:.0f} MB input",
         f"{pre[small]['main_rss_mb']:.0f} vs {pre[big_w]['main_rss_mb']:.0f} MB",
         f"diff {d_main:+.0f} MB {'ok' if abs(d_main) < 50 else 'FAIL'} (< 50)"),
        (f"preprocess peak RSS worker, {pre[small]['mb']:.0f} vs {pre[big_w]['mb']:.0f} MB input",
         f"{pre[small]['worker_rss_mb']:.0f} vs {pre[big_w]['worker_rss_mb']:.0f} MB",
         f"diff {d_worker:+.0f} MB {'ok' if abs(d_worker) < 50 else 'FAIL'} (< 50)"),
        *[(f"loader, seq 1024, gbs 64, {ld[k]['mb']:.0f} MB dataset",
           f"{ld[k]['samples_per_s']:.0f} samples/s",
           f"{ld[k]['samples_per_s'] * 1024 / 1e6:.1f} M tokens/s") for k in ("small", "big")],
        (f"loader peak RSS, {ld['small']['mb']:.0f} MB vs {ld['big']['mb']:.0f} MB dataset",
         f"{ld['small']['peak_rss_mb']:.0f} vs {ld['big']['peak_rss_mb']:.0f} MB",
         f"diff {d_loader:+.0f} MB {'ok' if abs(d_loader) < 50 else 'FAIL'} (< 50)"),
        (f"index build, {idx['tokens'] / 1e9:.2f}e9 tokens, {idx['documents']} docs",
         f"{idx['seconds']:.2f} s", f"{'ok' if idx['seconds'] < 30 else 'FAIL'} (< 30 s)"),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description="data pipeline benchmark")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--out", default="bench/results/data.json")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each 100 MB preprocessing (best kept: the machine may be shared)")
    p.add_argument("--workdir", default="/tmp/megaclap_bench_data",
                   help="corpora, synthetic datasets and caches (reused across runs)")
    p.add_argument("--child", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return None
    res = run(args)
    rows = table(res)
    res["table"] = rows
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'value':>22}  check")
    for name, value, check in rows:
        print(f"{name:<{width}}  {value:>22}  {check}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
