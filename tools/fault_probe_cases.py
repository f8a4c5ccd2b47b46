"""The cases of tools/fault_probe.py, one function each: (probe, scratch dir) -> (outcome, detail).

Grouped by the item of the reliability issue (23) they come from: 6 two writers of one output,
7 merge over an existing output, 8 data checks, 9 flags and resume (here), 10 tracebacks where
a line is due (tools/fault_probe_faults.py). The docstring of each case says what it does.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time

import numpy as np

from tools.fault_probe import error_line, resume, stop, tiny, verdict, write_corpus

CASES: list = []
TRAIN = "examples/pretrain_gpt/pretrain_gpt.py"


def case(item: str):
    def register(fn):
        CASES.append((item, fn.__name__.replace("_", "-"), fn))
        return fn
    return register


def refused(res: dict, want: str = None) -> tuple:
    return verdict(res, want), error_line(res["out"])


def digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def wait_for(pred, timeout: float = 120, proc=None) -> bool:
    """Poll pred() every 10 ms until true; False on timeout or when proc has ended."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(pred())
        time.sleep(0.01)
    return False


def checkpoint(probe, name: str = "ckpt", *extra) -> str:
    """A tiny saved checkpoint (2 iterations), built once per probe run."""
    def build():
        path = probe.path(name)
        res = probe.train(*tiny("--save", path, *extra, iters=2))
        if res["rc"] != 0:
            raise RuntimeError(f"fixture checkpoint failed: {error_line(res['out'])}")
        return path
    return probe.cached(f"ckpt:{name}:{extra}", build)


def copied_checkpoint(probe, tmp: str) -> str:
    """A private copy of the fixture checkpoint, for cases that damage it."""
    import shutil
    return shutil.copytree(checkpoint(probe), os.path.join(tmp, "ckpt"))


def resumed_with(probe, flag: str, value: str, want: str) -> tuple:
    """Resume the fixture checkpoint with one model flag changed; the verdict."""
    argv = tiny("--load", checkpoint(probe), iters=4)
    argv[argv.index(flag) + 1] = value
    return refused(probe.train(*argv), want)


def corpus(probe) -> str:
    return probe.cached("corpus", lambda: write_corpus(probe.path("corpus")))


def gpt2_files(probe) -> tuple:
    """A small byte-level BPE vocab.json + merges.txt with <|endoftext|>."""
    def build():
        from tokenizers import ByteLevelBPETokenizer
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(["the pipeline sends activations forward and gradients back"] * 50,
                                vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
        folder = probe.path("gpt2")
        os.makedirs(folder, exist_ok=True)
        tok.save_model(folder)
        return os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    return probe.cached("gpt2", build)


def shard_seeds(root: str) -> dict:
    """{iteration: the --seed recorded in that iteration's shard} of a checkpoint directory."""
    import torch
    out = {}
    for d in sorted(glob.glob(os.path.join(root, "iter_???????"))):
        try:
            shard = torch.load(os.path.join(d, "mp_rank_00", "model_optim_rng.pt"), weights_only=False)
            out[int(d[-7:])] = shard["args"]["train"]["seed"]
        except Exception:
            out[int(d[-7:])] = None
    return out


# --- 6: two writers of one output --------------------------------------------------------------
def _take_turns(procs: list, marker: str, timeout: float = 300) -> None:
    """Run paused processes one at a time, each until its log shows one more `marker` (or it
    ends), then pause it and let the next go: two writers interleaved turn by turn."""
    seen = [0] * len(procs)
    end = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < end:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                continue
            resume(p)
            wait_for(lambda: open(p.log_path).read().count(marker) > seen[i], timeout=end - time.monotonic(), proc=p)
            seen[i] = open(p.log_path).read().count(marker)
            if p.poll() is None:
                stop(p)
    for p in procs:
        if p.poll() is None:
            resume(p)


@case("6")
def two_trainings_one_save_dir(probe, tmp):
    """Two trainings with one `--save` (a requeued job, `--load` = `--save`, while the old one
    still runs), their saves interleaved: each runs until its next save, then the other."""
    save = os.path.join(tmp, "ckpt")
    first = probe.start(TRAIN, *tiny("--save", save, "--save-interval", 1, "--seed", 11, iters=6))
    marker = "saved checkpoint from iteration"
    if not wait_for(lambda: marker in open(first.log_path).read(), proc=first):
        return "probe-error", "the first run never saved: " + error_line(probe.finish(first)["out"])
    stop(first)
    second = probe.start(TRAIN, *tiny("--load", save, "--save", save, "--save-interval", 1, "--seed", 22, iters=6))
    stop(second)
    _take_turns([second, first], marker)
    runs = [probe.finish(first), probe.finish(second)]
    seeds = shard_seeds(save)
    for run, seed in zip(runs, (11, 22)):
        claimed = [int(m) for m in re.findall(marker + r"\s+(\d+)", run["out"])]
        if any(seeds.get(it) != seed for it in claimed) or None in seeds.values():
            return "data loss", f"the run with --seed {seed} reports iterations {claimed} saved; seeds on disk {seeds}"
    failed = [r for r in runs if r["rc"] != 0]
    if len(failed) != 1:
        return ("silent" if not failed else "unclear"), "; ".join(error_line(r["out"]) for r in failed)
    if failed[0] is runs[0]:  # the run that owned the directory first must not be the one to stop
        return "misleading", "the first run stopped: " + error_line(runs[0]["out"])
    return refused(failed[0], "in use|locked|another")


def _big_text(path: str, tag: str, docs: int) -> None:
    with open(path, "w") as f:
        for i in range(docs):
            f.write(json.dumps({"text": f"{tag} " + " ".join(str(5 + (i + j) % 80) for j in range(60))}) + "\n")


@case("6")
def two_preprocess_runs_one_prefix(probe, tmp):
    """Two `preprocess_data.py` runs into one `--output-prefix` at once (the first paused while
    it writes)."""
    a, b = os.path.join(tmp, "a.jsonl"), os.path.join(tmp, "b.jsonl")
    _big_text(a, "1", 40000)
    _big_text(b, "2", 300)
    out = os.path.join(tmp, "out")
    args = ("--json-keys", "text", "--tokenizer-type", "NullTokenizer", "--vocab-size", 96,
            "--output-prefix", out, "--log-interval", 0)
    first = probe.start("tools/preprocess_data.py", "--input", a, *args)
    if not wait_for(lambda: glob.glob(out + "_text_document*"), proc=first):
        return "probe-error", "the first run wrote nothing: " + error_line(probe.finish(first)["out"])
    stop(first)
    second = probe.run("tools/preprocess_data.py", "--input", b, *args)
    resume(first)
    one = probe.finish(first)
    return _one_dataset(out + "_text_document", {1: 40000, 2: 300}, one, second)


def _one_dataset(prefix: str, docs_by_tag: dict, first: dict, second: dict) -> tuple:
    """Data loss unless the prefix holds exactly one writer's complete output; else the verdict
    on the refused writer."""
    from megaclap.data.indexed_dataset import IndexedDataset
    try:
        ds = IndexedDataset(prefix)
        tags = {int(ds.get(i, 0, 1)[0]) for i in range(len(ds))}
        ok = len(tags) == 1 and ds.num_documents == docs_by_tag.get(tags.pop())
    except Exception as e:
        return "data loss", f"{prefix} is unreadable: {e}"
    if not ok:
        return "data loss", f"{prefix} holds {ds.num_documents} documents of mixed or partial outputs"
    results = [r for r in (first, second) if r["rc"] != 0]
    if len(results) != 1:
        return ("silent" if not results else verdict(results[0])), "; ".join(error_line(r["out"]) for r in results)
    return refused(results[0], "in use|locked|another")


@case("6")
def two_merges_one_prefix(probe, tmp):
    """Two `merge_datasets.py` runs into one `--output-prefix` at once (the first paused while
    it writes)."""
    shards = os.path.join(tmp, "shards")
    os.makedirs(shards)
    for i in range(6):
        write_corpus(os.path.join(shards, f"s{i}"), docs=4000, seed=i, length=400)
    small = write_corpus(os.path.join(tmp, "small"), docs=10, seed=9)
    out = os.path.join(tmp, "merged")
    first = probe.start("tools/merge_datasets.py", "--input", shards, "--output-prefix", out)
    if not wait_for(lambda: glob.glob(out + "*"), proc=first):
        return "probe-error", "the first merge wrote nothing: " + error_line(probe.finish(first)["out"])
    stop(first)
    second = probe.run("tools/merge_datasets.py", "--input", small, "--output-prefix", out)
    resume(first)
    one = probe.finish(first)
    return _merged_ok(out, one, second)


def _merged_ok(out: str, first: dict, second: dict) -> tuple:
    from megaclap.data.indexed_dataset import IndexedDataset
    try:
        docs = IndexedDataset(out).num_documents
    except Exception as e:
        return "data loss", f"{out} is unreadable after both runs: {str(e)[:100]}"
    if docs not in (24000, 10):
        return "data loss", f"{out} holds {docs} documents (24000 or 10 expected)"
    results = [r for r in (first, second) if r["rc"] != 0]
    if len(results) != 1:
        return ("silent" if not results else verdict(results[0])), "; ".join(error_line(r["out"]) for r in results)
    return refused(results[0], "in use|locked|another")


# --- 7: merge over an existing output ------------------------------------------------------------
@case("7")
def merge_over_existing_with_a_truncated_shard(probe, tmp):
    """`merge_datasets.py` re-run over an existing output while one shard's `.bin` is truncated."""
    shards = os.path.join(tmp, "shards")
    os.makedirs(shards)
    for i in range(3):
        write_corpus(os.path.join(shards, f"s{i}"), seed=i)
    out = os.path.join(tmp, "merged")
    first = probe.run("tools/merge_datasets.py", "--input", shards, "--output-prefix", out)
    if first["rc"] != 0:
        return "probe-error", error_line(first["out"])
    before = digest(out + ".bin", out + ".idx")
    with open(os.path.join(shards, "s1.bin"), "r+b") as f:
        f.truncate(1000)
    res = probe.run("tools/merge_datasets.py", "--input", shards, "--output-prefix", out)
    if digest(out + ".bin", out + ".idx") != before:
        return "data loss", f"{out}.bin/.idx changed: " + error_line(res["out"])
    return refused(res, "s1")


# --- 8: data checks ------------------------------------------------------------------------------
@case("8")
def idx_with_a_longer_bin_of_another_run(probe, tmp):
    """Training on an `.idx` paired with a longer `.bin` of another run."""
    a = write_corpus(os.path.join(tmp, "a"), docs=64, seed=1)
    b = write_corpus(os.path.join(tmp, "b"), docs=80, seed=2)
    mixed = os.path.join(tmp, "mixed")
    os.replace(a + ".idx", mixed + ".idx")
    os.replace(b + ".bin", mixed + ".bin")
    return refused(probe.train(*tiny(data=mixed)), r"\.bin")


@case("8")
def idx_dtype_byte_uint8_over_a_uint16_bin(probe, tmp):
    """Training on an `.idx` whose dtype byte says uint8 over a uint16 `.bin`."""
    prefix = write_corpus(os.path.join(tmp, "c"))
    with open(prefix + ".idx", "r+b") as f:
        f.seek(17)
        f.write(bytes([1]))
    return refused(probe.train(*tiny(data=prefix)), "pointer|dtype")


@case("8")
def random_bytes_preprocessed_as_text(probe, tmp):
    """20 kB of random bytes given to `preprocess_data.py` as a `.txt` file."""
    vocab, merges = gpt2_files(probe)
    path = os.path.join(tmp, "noise.txt")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(20000))
    res = probe.run("tools/preprocess_data.py", "--input", path, "--tokenizer-type", "GPT2BPETokenizer",
                    "--vocab-file", vocab, "--merge-file", merges, "--output-prefix", os.path.join(tmp, "o"),
                    "--log-interval", 0)
    warned = [line for line in res["out"].splitlines() if "warning" in line.lower() and "noise.txt" in line]
    if res["rc"] == 0 and warned:
        return "handled", warned[0][:160]
    return verdict(res), error_line(res["out"])


# --- 9: flags and resume -------------------------------------------------------------------------
def _flag_case(flag_args: list, want: str):
    def run(probe, tmp):
        return refused(probe.train(*tiny(*flag_args)), want)
    return run


for _name, _args, _want in (
        ("lazy_sampling_prob_0", ["--lazy-sampling-prob", "0"], "lazy-sampling"),
        ("lr_warmup_longer_than_the_run", ["--lr-warmup-iters", "10"], "--lr-warmup-iters"),
        ("clip_grad_negative", ["--clip-grad", "-1"], "--clip-grad"),
        ("weight_decay_negative", ["--weight-decay", "-0.1"], "--weight-decay"),
        ("ffn_hidden_size_0", ["--ffn-hidden-size", "0"], "--ffn-hidden-size")):
    _fn = _flag_case(_args, _want)
    _fn.__name__ = _name
    _fn.__doc__ = f"`{' '.join(_args)}`"
    case("9")(_fn)


@case("9")
def resume_with_another_split(probe, tmp):
    """Resume with another `--split` (validation would overlap trained documents)."""
    data, save = corpus(probe), os.path.join(tmp, "ckpt")
    first = probe.train(*tiny("--save", save, iters=2, data=data))
    if first["rc"] != 0:
        return "probe-error", error_line(first["out"])
    argv = tiny("--load", save, iters=4, data=data)
    argv[argv.index("--split") + 1] = "50,50,0"
    return refused(probe.train(*argv), "--split")


@case("9")
def load_of_a_file(probe, tmp):
    """`--load` naming a file instead of a checkpoint directory."""
    ckpt = checkpoint(probe)
    shard = os.path.join(ckpt, "iter_0000002", "mp_rank_00", "model_optim_rng.pt")
    return refused(probe.train(*tiny("--load", shard, iters=4)), "--load")


@case("9")
def load_4_heads_into_8_heads(probe, tmp):
    """Loading a checkpoint saved with 4 heads into 8 heads of the same hidden size."""
    return resumed_with(probe, "--num-attention-heads", "8", "--num-attention-heads")


@case("9")
def reshard_save_dir_equal_to_load_dir(probe, tmp):
    """`reshard.py` with `--save-dir` equal to `--load-dir`."""
    ckpt = copied_checkpoint(probe, tmp)
    res = probe.run("tools/checkpoint/reshard.py", "--load-dir", ckpt, "--save-dir", ckpt,
                    "--target-tensor-parallel-size", 2, "--target-pipeline-parallel-size", 1)
    if os.path.isdir(os.path.join(ckpt, "iter_0000002", "mp_rank_01")):
        return "data loss", "the tp=1 shards were replaced in place by tp=2 ones: " + error_line(res["out"])
    return refused(res, "--save-dir")


for _name, _args, _want in (("generate_max_new_tokens_negative", ["--max-new-tokens", "-3"], "--max-new-tokens"),
                            ("generate_temperature_negative", ["--temperature", "-1"], "--temperature"),
                            ("generate_top_p_above_1", ["--top-p", "1.5"], "--top-p")):
    def _gen(probe, tmp, _args=_args, _want=_want):
        return refused(probe.run("tools/generate.py", "--load", checkpoint(probe), "--prompt", "1 2 3",
                                 "--tokenizer-type", "NullTokenizer", *_args), _want)
    _gen.__name__ = _name
    _gen.__doc__ = f"`tools/generate.py {' '.join(_args)}`"
    case("9")(_gen)
