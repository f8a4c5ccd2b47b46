"""Codec benchmark: bytes on the wire, encode+decode throughput, error on real boundary tensors.

    python -m bench.compression [--out bench/results/compression.json] [--reps 7]
    python -m bench.compression --speedup-only --baseline-codecs /path/to/old/megaclap/compression/codecs.py
    python -m bench.compression --real-only --data-args "<data flags>" \
        --out bench/results/compression_real.json

(1) Wire table: payload bytes and payload/raw ratio of each codec for a GPT-2-small boundary
    tensor [b=1, s=1024, h=768] in bf16 and fp32 (pure arithmetic: payload_nbytes, checked
    against a real encode).
(2) Throughput: encode + decode, in GB/s of the raw tensor, next to a plain x.clone() of the
    same tensor measured in the same run (median of --reps after one warm-up), on CPU and,
    when available, CUDA (synchronised around each timing).
(3) Convergence: GPT-tiny at PP=2 for each method (bench/convergence.py; --convergence-steps 0
    skips it).
(4) Before/after (--speedup-only --baseline-codecs): encode+decode GB/s on a [1, 2048, 4096]
    fp32 tensor, this tree's codecs against another checkout's codecs.py (loaded by path),
    before and after alternating rep by rep (CPU: one thread, process CPU time, robust to a
    shared box; CUDA: synchronised wall time).
(5) Codecs on real boundary tensors (--real-only): bits per element, payload ratio (bf16 and
    fp32), relative error ||x_hat - x|| / ||x|| on the activation leaving layer 2 of a 4-layer
    GPT (h=128, seq 128, micro batch 8; the PP=2 boundary) and on its gradient, after
    --real-steps training steps on --data-args; and CPU GB/s on the [1, 1024, 768] tensor of
    (1) (one thread, process CPU time, median of --reps).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from megaclap.compression.codecs import parse_codec

CODECS = ["identity", "cast:bf16", "cast:fp16", "topk:0.1", "topk:0.01", "randk:0.1",
          "quant:8", "quant:4", "quant:2", "hquant:4", "hquant:2", "hquant:1", "hquant:1:sr",
          "topk:0.1:q8", "topk:0.05:q8", "topk:0.1:q4", "randk:0.1:q8", "lowrank:8", "lowrank:32"]
SHAPE = (1, 1024, 768)  # [b, s, h]: GPT-2 small, one sequence
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOPK_CHUNK_SLACK = 1e-4  # topk keeps ceil(0.1 * 65536) = 6554 per chunk: 0.20001x, not 0.2x


def wire_table() -> list:
    """Payload bytes and ratio per (dtype, codec); asserts the headline ratios."""
    rows = []
    for dname, dtype in DTYPES.items():
        x = torch.randn(SHAPE).to(dtype)
        raw = x.numel() * x.element_size()
        for spec in CODECS:
            codec = parse_codec(spec)
            nbytes = codec.payload_nbytes(SHAPE, dtype)
            assert codec.encode(x, seed=0).numel() == nbytes
            rows.append({"dtype": dname, "codec": spec, "raw_bytes": raw, "payload_bytes": nbytes,
                         "ratio": nbytes / raw})
    ratio = {(r["dtype"], r["codec"]): r["ratio"] for r in rows}
    assert ratio[("bf16", "topk:0.1")] <= 0.2 + TOPK_CHUNK_SLACK, ratio[("bf16", "topk:0.1")]
    assert ratio[("bf16", "quant:4")] <= 0.27, ratio[("bf16", "quant:4")]
    assert ratio[("bf16", "hquant:1")] == 1.25 / 16, ratio[("bf16", "hquant:1")]  # 1.25 bits
    return rows


def _median_seconds(fn, device: torch.device, reps: int) -> float:
    """Median wall time of fn() over reps runs after one warm-up (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput_table(device: torch.device, reps: int) -> list:
    """GB/s of raw tensor for encode+decode of each codec, and for x.clone() (baseline)."""
    rows = []
    for dname, dtype in DTYPES.items():
        x = torch.randn(SHAPE, device=device).to(dtype)
        raw = x.numel() * x.element_size()
        secs = _median_seconds(x.clone, device, reps)
        rows.append({"device": device.type, "dtype": dname, "codec": "x.clone()", "ms": secs * 1e3,
                     "gbps": raw / secs / 1e9})
        for spec in CODECS:
            secs = _median_seconds(_round_trip(parse_codec(spec), x), device, reps)
            rows.append({"device": device.type, "dtype": dname, "codec": spec, "ms": secs * 1e3,
                         "gbps": raw / secs / 1e9})
    return rows


SPEEDUP_SHAPE = (1, 2048, 4096)
RANDK_DRAW = "randk:0.1 indices"
SPEEDUP_CODECS = ["randk:0.1", RANDK_DRAW, "quant:8", "quant:4", "quant:2", "quant:4:sr", "hquant:4",
                  "hquant:4:sr", "hquant:2", "topk:0.1"]


def _load_codecs(path: str):
    """A codecs.py from another checkout, as a module (the 'before' of the speed-up table).
    Its folder becomes a bare package, so its relative imports (.base, .hquant) resolve there."""
    import importlib
    import types
    name = "baseline_compression"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.path.dirname(os.path.abspath(path))]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.{os.path.splitext(os.path.basename(path))[0]}")


def _cpu_seconds(fn) -> float:
    """Process CPU time (user + system) of one fn() call: robust to a shared, loaded box."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def _wall_seconds(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _round_trip(codec, x: torch.Tensor, draw_only: bool = False):
    """A call doing one encode + decode with a new seed each time, as in training (the randk
    index draw alone with draw_only)."""
    seeds = iter(range(1 << 30))
    if draw_only:
        return lambda: codec.indices(x.numel(), next(seeds), x.device)

    def run():
        seed = next(seeds)
        return codec.decode(codec.encode(x, seed=seed), x.shape, x.dtype, seed=seed)
    return run


def speedup_table(baseline_path: str, device: torch.device, reps: int) -> list:
    """encode+decode GB/s of the baseline codecs and of this tree's on the same tensor, the two
    alternating rep by rep after one warm-up each (so load changes hit both alike)."""
    old = _load_codecs(baseline_path)
    x = torch.randn(SPEEDUP_SHAPE, device=device)
    raw, rows = x.numel() * x.element_size(), []
    for spec in SPEEDUP_CODECS:
        name = spec.split()[0]
        calls = {label: _round_trip(parse(name), x, spec == RANDK_DRAW)
                 for label, parse in (("before", old.parse_codec), ("after", parse_codec))}
        times = {"before": [], "after": []}
        for rep in range(reps + 1):
            for label, call in calls.items():
                secs = _cpu_seconds(call) if device.type == "cpu" else _wall_seconds(call, device)
                if rep:  # rep 0 warms up
                    times[label].append(secs)
        row = {"device": device.type, "codec": spec, "shape": list(SPEEDUP_SHAPE), "dtype": "fp32"}
        for label, ts in times.items():
            secs = statistics.median(ts)
            row[f"ms_{label}"], row[f"gbps_{label}"] = secs * 1e3, raw / secs / 1e9
        row["speedup"] = row["ms_before"] / row["ms_after"]
        rows.append(row)
    return rows


REAL_SPECS = ["quant:8", "hquant:8", "quant:4", "hquant:4", "hquant:3", "quant:2", "hquant:2",
              "hquant:1", "hquant:1:sr", "topk:0.1", "topk:0.1:q8", "topk:0.05:q8", "topk:0.1:q4",
              "randk:0.1",
              "randk:0.1:q8", "lowrank:8", "lowrank:32"]


def boundary_tensors(data_args: list, steps: int) -> tuple:
    """(activation, gradient) [8, 128, 128] at the middle of a 4-layer GPT after `steps` steps."""
    from megaclap.config import parse_args
    from megaclap.parallel.state import ParallelState
    from megaclap.training.trainer import Trainer
    argv = ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128",
            "--max-position-embeddings", "128", "--micro-batch-size", "8", "--global-batch-size", "8",
            "--train-iters", str(steps + 1), "--lr", "1e-3", "--lr-warmup-iters", "10", *data_args]
    from megaclap.training.pretrain import resolve_vocab_size
    cfg = parse_args(argv)
    resolve_vocab_size(cfg)
    tr = Trainer(cfg.validate(1), ParallelState(1, 1, 1, 0, torch.device("cpu")), print_fn=lambda s: None)
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    got = {}

    def hook(module, inputs, out):
        got["act"] = out.detach().clone()
        out.register_hook(lambda g: got.__setitem__("grad", g.detach().clone()))
    handle = tr.stage.decoder.layers[1].register_forward_hook(hook)
    tr.train_step(tr.data.train.next_batch())
    handle.remove()
    return got["act"], got["grad"]


def real_table(act: torch.Tensor, grad: torch.Tensor, reps: int) -> list:
    """Per codec: bits per element, payload ratio, relative error on the real tensors, and CPU
    GB/s (one thread, process CPU time) on the GPT-2-small boundary shape."""
    rows = []
    for spec in REAL_SPECS:
        codec, n = parse_codec(spec), act.numel()
        nbytes = {d: codec.payload_nbytes(act.shape, d) for d in (torch.bfloat16, torch.float32)}
        row = {"codec": spec, "bits_per_elem_bf16": nbytes[torch.bfloat16] * 8 / n,
               "ratio_bf16": nbytes[torch.bfloat16] / (2 * n),
               "ratio_fp32": nbytes[torch.float32] / (4 * n)}
        for name, t in (("act", act), ("grad", grad)):
            y = codec.decode(codec.encode(t, seed=5), t.shape, t.dtype, seed=5)
            row[f"rel_err_{name}"] = float((y - t).norm() / t.norm())
        for dname, dtype in DTYPES.items():
            x = torch.randn(SHAPE).to(dtype)
            call = _round_trip(codec, x)
            call()
            secs = statistics.median(_cpu_seconds(call) for _ in range(reps))
            row[f"gbps_{dname}"] = x.numel() * x.element_size() / secs / 1e9
        rows.append(row)
    return rows


def print_table(title: str, rows: list, cols: list) -> None:
    print(f"\n{title}")
    print("  ".join(f"{c:>13}" for c in cols))
    for r in rows:
        cells = [f"{r[c]:>13.4f}" if isinstance(r[c], float) else f"{r[c]:>13}" for c in cols]
        print("  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/compression.json")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--convergence-steps", type=int, default=300,
                        help="steps of the PP=2 convergence table (0 skips it)")
    parser.add_argument("--data-args", default="--mock-data",
                        help="data flags for the convergence runs, e.g. '--data-path P --tokenizer-type ...'")
    parser.add_argument("--baseline-codecs", default=None,
                        help="codecs.py of another checkout: adds the before/after table (4)")
    parser.add_argument("--speedup-only", action="store_true", help="run only table (4)")
    parser.add_argument("--real-steps", type=int, default=100,
                        help="training steps before (5) captures tensors")
    parser.add_argument("--real-only", action="store_true", help="run only table (5)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.real_only:
        act, grad = boundary_tensors(args.data_args.split(), args.real_steps)
        torch.set_num_threads(1)
        rows = real_table(act, grad, args.reps)
        print_table(f"(5) codecs on real boundary tensors {list(act.shape)} after {args.real_steps} "
                    f"steps (rel err), CPU GB/s on {list(SHAPE)} (one thread, median of {args.reps})",
                    rows, ["codec", "bits_per_elem_bf16", "ratio_bf16", "ratio_fp32", "rel_err_act",
                           "rel_err_grad", "gbps_bf16", "gbps_fp32"])
        _write(args.out, {"real": rows, "data_args": args.data_args, "steps": args.real_steps,
                          "torch": torch.__version__, "cpu_threads": torch.get_num_threads()})
        return
    if args.speedup_only:
        torch.set_num_threads(1)
        if not args.baseline_codecs:
            parser.error("--speedup-only needs --baseline-codecs PATH")
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        rows = [r for dev in devices for r in speedup_table(args.baseline_codecs, dev, args.reps)]
        print_table(f"(4) encode+decode, {list(SPEEDUP_SHAPE)} fp32, before vs after (median of {args.reps})",
                    rows, ["device", "codec", "ms_before", "ms_after", "gbps_before", "gbps_after", "speedup"])
        _write(args.out, {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                          "baseline": args.baseline_codecs, "speedup": rows})
        return
    wire = wire_table()
    print_table(f"(1) wire bytes, boundary tensor {list(SHAPE)}", wire,
                ["dtype", "codec", "raw_bytes", "payload_bytes", "ratio"])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    speed = [row for dev in devices for row in throughput_table(dev, args.reps)]
    print_table(f"(2) encode+decode throughput, GB/s of raw tensor (median of {args.reps})", speed,
                ["device", "dtype", "codec", "ms", "gbps"])
    convergence = []
    if args.convergence_steps > 0:
        from bench.convergence import convergence_table, print_convergence
        convergence = convergence_table(args.convergence_steps, args.data_args.split())
        print_convergence(convergence, args.convergence_steps)
    result = {"convergence": convergence, "shape": list(SHAPE), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "wire": wire, "throughput": speed}
    _write(args.out, result)


def _write(path: str, result: dict) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
