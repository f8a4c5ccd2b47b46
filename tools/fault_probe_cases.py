"""The cases of tools/fault_probe.py, one function each: (probe, scratch dir) -> (outcome, detail).

Grouped by the item of the reliability issue (23) they come from: 6 two writers of one output,
7 merge over an existing output, 8 data checks, 9 flags and resume, 10 tracebacks where a line
is due. The docstring of each case is the row of the README's reliability table.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
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
    argv = tiny("--load", checkpoint(probe), iters=4)
    argv[argv.index("--num-attention-heads") + 1] = "8"
    return refused(probe.train(*argv), "--num-attention-heads")


@case("9")
def reshard_save_dir_equal_to_load_dir(probe, tmp):
    """`reshard.py` with `--save-dir` equal to `--load-dir`."""
    import shutil
    ckpt = os.path.join(tmp, "ckpt")
    shutil.copytree(checkpoint(probe), ckpt)
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


# --- 10: tracebacks where a line is due -----------------------------------------------------------
@case("10")
def full_disk_during_save(probe, tmp):
    """A real full disk (a 600 kB tmpfs) while saving the second checkpoint."""
    if os.geteuid() != 0:
        return "skipped", "needs root to mount a tmpfs"
    disk = os.path.join(tmp, "disk")
    os.makedirs(disk)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", disk], check=True)
    try:
        save = os.path.join(disk, "ckpt")
        res = probe.train(*tiny("--save", save, "--save-interval", 1, iters=4))
        tracker = open(os.path.join(save, "latest_checkpointed_iteration.txt")).read().strip() \
            if os.path.isfile(os.path.join(save, "latest_checkpointed_iteration.txt")) else None
        seeds = shard_seeds(save)
    finally:
        subprocess.run(["umount", disk], check=False)
    if tracker is None or seeds.get(int(tracker)) != 3:
        return "data loss", f"tracker {tracker}, loadable iterations {seeds}: " + error_line(res["out"])
    return refused(res, "space|--save")


@case("10")
def corrupt_sentencepiece_model(probe, tmp):
    """A corrupt sentencepiece `--tokenizer-model` (random bytes)."""
    model = os.path.join(tmp, "bad.model")
    with open(model, "wb") as f:
        f.write(np.random.default_rng(1).bytes(3000))
    argv = [a for a in tiny(data=corpus(probe)) if a not in ("--vocab-size", "96")]
    return refused(probe.train(*argv, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model),
                   "--tokenizer-model")


def _gpt2_case(which: str):
    def run(probe, tmp):
        vocab, merges = gpt2_files(probe)
        bad = os.path.join(tmp, os.path.basename(vocab if which == "vocab" else merges))
        with open(bad, "w") as f:
            f.write('{"a": 0, "b": ' if which == "vocab" else "#version: 0.2\nonly-one-token-here\n")
        files = (bad, merges) if which == "vocab" else (vocab, bad)
        text = os.path.join(tmp, "t.jsonl")
        with open(text, "w") as f:
            f.write(json.dumps({"text": "the pipeline"}) + "\n")
        res = probe.run("tools/preprocess_data.py", "--input", text, "--tokenizer-type", "GPT2BPETokenizer",
                        "--vocab-file", files[0], "--merge-file", files[1], "--output-prefix",
                        os.path.join(tmp, "o"), "--log-interval", 0)
        return refused(res, "--vocab-file" if which == "vocab" else "--merge-file")
    return run


for _which in ("vocab", "merges"):
    _fn = _gpt2_case(_which)
    _fn.__name__ = f"corrupt_gpt2_{_which}"
    _fn.__doc__ = f"A corrupt GPT-2 BPE {'vocab.json' if _which == 'vocab' else 'merges.txt'} (preprocessing)"
    case("10")(_fn)


def _peer_case(kill_rank: int, sig: int):
    def run(probe, tmp):
        ranks = probe.job(2, tiny("--pipeline-model-parallel-size", 2, "--distributed-timeout-minutes", 0.1,
                                  iters=100000))
        log = ranks[1].log_path
        if not wait_for(lambda: "iteration        2/" in open(log).read(), timeout=180, proc=ranks[1]):
            for r in ranks:
                r.kill()
            return "probe-error", "the job never reached iteration 2: " + error_line(open(log).read())
        os.kill(ranks[kill_rank].pid, sig)
        survivor = probe.finish(ranks[1 - kill_rank], timeout=120)
        ranks[kill_rank].kill()
        probe.finish(ranks[kill_rank])
        return refused(survivor, "rank|peer")
    return run


for _name, _rank, _sig, _what in (("peer_killed_last_stage", 1, signal.SIGKILL, "SIGKILL of rank 1 (last stage)"),
                                  ("peer_killed_rank_0_store_host", 0, signal.SIGKILL,
                                   "SIGKILL of rank 0 (first stage, hosts the store)"),
                                  ("peer_stopped", 1, signal.SIGSTOP, "SIGSTOP of rank 1")):
    _fn = _peer_case(_rank, _sig)
    _fn.__name__ = _name
    _fn.__doc__ = f"{_what} of a 2-rank pp=2 job, `--distributed-timeout-minutes 0.1`"
    case("10")(_fn)


@case("10")
def channel_method_changed_on_resume(probe, tmp):
    """Resume a pp=2 ef21 run with `--pp-compression-method clapping-fu`."""
    save = os.path.join(tmp, "ckpt")
    common = ("--pipeline-model-parallel-size", 2, "--pp-fwd-codec", "quant:8", "--pp-bwd-codec", "quant:8")
    first = [probe.finish(r) for r in probe.job(2, tiny(*common, "--pp-compression-method", "ef21",
                                                        "--save", save, iters=2))]
    if any(r["rc"] != 0 for r in first):
        return "probe-error", error_line(first[0]["out"] + first[1]["out"])
    second = [probe.finish(r) for r in probe.job(2, tiny(*common, "--pp-compression-method", "clapping-fu",
                                                         "--lazy-sampling-prob", 0.5, "--load", save, iters=4))]
    joined = {"rc": max(r["rc"] or 0 for r in second), "out": "\n".join(r["out"] for r in second),
              "timed_out": any(r["timed_out"] for r in second)}
    if joined["rc"] == 0 and "Channel" in joined["out"] and "fresh" in joined["out"]:
        note = [line for line in joined["out"].splitlines() if "fresh" in line]
        return "handled", note[0].strip()[:160]
    return refused(joined, "--pp-compression-method")


@case("10")
def merge_datasets_missing_input(probe, tmp):
    """`merge_datasets.py --input` naming nothing that exists."""
    return refused(probe.run("tools/merge_datasets.py", "--input", os.path.join(tmp, "nothing"),
                             "--output-prefix", os.path.join(tmp, "m")), "--input")


@case("10")
def merge_datasets_dtype_mismatch(probe, tmp):
    """`merge_datasets.py` over shards of two token dtypes."""
    a = write_corpus(os.path.join(tmp, "a"))
    b = write_corpus(os.path.join(tmp, "b"), dtype=np.int32)
    return refused(probe.run("tools/merge_datasets.py", "--input", a, b, "--output-prefix",
                             os.path.join(tmp, "m")), "dtype")


@case("10")
def train_tokenizer_missing_input(probe, tmp):
    """`train_tokenizer.py --input` matching no file."""
    return refused(probe.run("tools/train_tokenizer.py", "--input", os.path.join(tmp, "none*.jsonl"),
                             "--output-prefix", os.path.join(tmp, "tok")), "--input|no file|matches")


@case("10")
def train_tokenizer_missing_key(probe, tmp):
    """`train_tokenizer.py` on records without the `--json-keys` key."""
    path = os.path.join(tmp, "d.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"body": "the text"}) + "\n")
    return refused(probe.run("tools/train_tokenizer.py", "--input", path, "--output-prefix",
                             os.path.join(tmp, "tok"), "--vocab-size", 50), "--json-keys")


def _hf_folder(tmp: str, config: str, weights: bytes) -> str:
    folder = os.path.join(tmp, "hf")
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(weights)
    return folder


GPT2_CONFIG = json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 32,
                          "n_head": 4, "n_positions": 16, "vocab_size": 96})


@case("10")
def convert_corrupt_config_json(probe, tmp):
    """`convert.py --loader hf` with a truncated `config.json`."""
    folder = _hf_folder(tmp, GPT2_CONFIG[:40], b"")
    return refused(probe.run("tools/checkpoint/convert.py", "--model-type", "gpt2", "--loader", "hf", "--saver",
                             "megaclap", "--load-dir", folder, "--save-dir", os.path.join(tmp, "out")), "config.json")


@case("10")
def convert_corrupt_safetensors(probe, tmp):
    """`convert.py --loader hf` with a corrupt `model.safetensors`."""
    folder = _hf_folder(tmp, GPT2_CONFIG, np.random.default_rng(2).bytes(5000))
    return refused(probe.run("tools/checkpoint/convert.py", "--model-type", "gpt2", "--loader", "hf", "--saver",
                             "megaclap", "--load-dir", folder, "--save-dir", os.path.join(tmp, "out")),
                   "safetensors")


@case("10")
def load_with_another_hidden_size(probe, tmp):
    """Resume with another `--hidden-size` than the checkpoint's."""
    argv = tiny("--load", checkpoint(probe), iters=4)
    argv[argv.index("--hidden-size") + 1] = "64"
    return refused(probe.train(*argv), "--hidden-size")


@case("10")
def missing_shard_at_the_same_layout(probe, tmp):
    """A checkpoint whose only `model_optim_rng.pt` was deleted, loaded at its own layout."""
    import shutil
    ckpt = os.path.join(tmp, "ckpt")
    shutil.copytree(checkpoint(probe), ckpt)
    os.remove(os.path.join(ckpt, "iter_0000002", "mp_rank_00", "model_optim_rng.pt"))
    res = probe.train(*tiny("--load", ckpt, iters=4))
    outcome, line = refused(res, "missing")
    if outcome == "one-line" and "another" in line:
        return "misleading", line
    return outcome, line


def _unwritable_case(flag: str, needs_data: bool):
    def run(probe, tmp):
        blocker = os.path.join(tmp, "a-file")
        open(blocker, "w").close()
        res = probe.train(*tiny(flag, os.path.join(blocker, "sub"), "--save-interval", 2,
                                data=corpus(probe) if needs_data else None, iters=4))
        outcome, line = refused(res, re.escape(flag))
        if outcome == "one-line" and re.search(r"iteration +\d+/", res["out"]):
            return "misleading", "refused only after training started: " + line
        return outcome, line
    return run


for _flag, _data in (("--save", False), ("--data-cache-path", True), ("--tensorboard-dir", False)):
    _fn = _unwritable_case(_flag, _data)
    _fn.__name__ = f"{_flag.strip('-').replace('-', '_')}_not_writable"
    _fn.__doc__ = f"`{_flag}` under a regular file (not writable), checked at start-up"
    case("10")(_fn)
