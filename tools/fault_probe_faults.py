"""Item 10 of the reliability issue (23) for tools/fault_probe.py: tracebacks where a line is due
(a real full disk, corrupt tokenizer files, dead or stuck peers, a changed compression method on
resume, the tools' input errors, checkpoint mismatches, unwritable output directories)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import numpy as np

from tools.fault_probe import error_line, tiny, write_corpus
from tools.fault_probe_cases import (case, copied_checkpoint, corpus, gpt2_files, refused, resumed_with,
                                     shard_seeds, wait_for)


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
        subprocess.run(["umount", "-l", disk], check=False)
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
    note = [line.strip() for line in joined["out"].splitlines() if "note:" in line and "Channel" in line]
    if joined["rc"] == 0 and note:
        return "handled", note[0]
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
    return resumed_with(probe, "--hidden-size", "64", "--hidden-size")


@case("10")
def missing_shard_at_the_same_layout(probe, tmp):
    """A checkpoint whose only `model_optim_rng.pt` was deleted, loaded at its own layout."""
    ckpt = copied_checkpoint(probe, tmp)
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
