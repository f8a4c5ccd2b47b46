"""Data for tools/ablate.py: turn a grid's `data:` entry and a regime into training flags.

Three kinds of `data:` entry:

    {mock: true, vocab_size: 512}                         synthetic tokens (--mock-data)
    {prefix: data/x_text_document, tokenizer_model: tok.model,
     tokenizer_type: SentencePieceTokenizer, split: "98,2,0"}   an existing .bin/.idx corpus
    {build: stdlib, vocab_size: 4096, valid_files: 24, max_files: 0}
                                                          built here like the quickstart

`build: stdlib` reuses the quickstart's pieces: the modules of this Python's standard library
become jsonl documents (examples/pretrain_gpt/stdlib_corpus.py: source and docstrings), a
sentencepiece BPE tokenizer is trained on them (tools/train_tokenizer.py) and they are
tokenized into .bin/.idx (tools/preprocess_data.py). Files, not documents, are assigned to
the validation split, spread evenly over the library (a module's source and its docstrings
always share a split). A regime may ask for `train_files: K`: a corpus with only
K training modules (spread evenly) and the *same* validation modules, so a few-epoch run
revisits its samples within a short CPU budget and its validation loss stays comparable
with the full-corpus runs. Everything is built once under <out-dir>/data and reused.
A regime may also name its own `data:` entry (e.g. a smaller prefix for few-epoch runs).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "pretrain_gpt")


def load_example(name: str):
    """examples/pretrain_gpt/<name>.py as a module (the examples are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod        # dataclasses look their module up while it executes
    spec.loader.exec_module(mod)
    return mod


def _spread(items: list, k: int) -> list:
    """k items spread evenly over `items` (all of them when k is 0 or too large)."""
    if not k or k >= len(items):
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _write_jsonl(path: str, files: list, corpus_mod) -> int:
    """One document per module source and one for its docstrings; returns the count."""
    docs = 0
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                source = fh.read()
            for text in (source, corpus_mod.docstrings(source)):
                if text.strip():
                    out.write(json.dumps({"text": text}) + "\n")
                    docs += 1
    os.replace(path + ".tmp", path)
    return docs


def _run(argv: list, what: str) -> None:
    """Run one of the repository's tools, failing loudly."""
    print(f"ablate: {what}", flush=True)
    subprocess.run(argv, check=True, cwd=REPO)


class StdlibData:
    """The standard-library corpus of one `build: stdlib` entry, built lazily per train size."""

    def __init__(self, spec: dict, data_dir: str):
        self.vocab = int(spec.get("vocab_size", 4096))
        self.valid_files = int(spec.get("valid_files", 24))
        max_files, max_bytes = int(spec.get("max_files", 0)), int(spec.get("max_bytes", 200_000))
        self.dir = os.path.join(data_dir, f"stdlib_f{max_files or 'all'}_v{self.vocab}")
        os.makedirs(self.dir, exist_ok=True)
        self.mod = load_example("stdlib_corpus")
        root = spec.get("root") or sysconfig.get_paths()["stdlib"]
        files = [f for f in self.mod.stdlib_files(root) if os.path.getsize(f) <= max_bytes]
        files = _spread(files, max_files)
        self.valid = _spread(files, self.valid_files)
        chosen = set(self.valid)
        self.train = [f for f in files if f not in chosen]
        self.tokenizer = os.path.join(self.dir, "tokenizer.model")

    def _ensure_tokenizer(self) -> None:
        """Train the BPE tokenizer on the training modules, once."""
        if os.path.exists(self.tokenizer):
            return
        corpus = os.path.join(self.dir, "tokenizer_corpus.jsonl")
        _write_jsonl(corpus, self.train, self.mod)
        _run([sys.executable, os.path.join(REPO, "tools", "train_tokenizer.py"), "--input", corpus,
              "--json-keys", "text", "--output-prefix", self.tokenizer[:-len(".model")],
              "--model-type", "bpe", "--vocab-size", str(self.vocab), "--byte-fallback"],
             f"sentencepiece tokenizer (vocab {self.vocab}) -> {self.tokenizer}")

    def flags(self, train_files: int = 0) -> list:
        """--data-path/--split/tokenizer flags for a corpus with `train_files` training modules
        (0: all) followed by the shared validation modules."""
        self._ensure_tokenizer()
        train = _spread(self.train, train_files)
        name = f"train{len(train)}_valid{len(self.valid)}"
        prefix = os.path.join(self.dir, name)
        meta_path = prefix + ".json"
        if not os.path.exists(meta_path):
            jsonl = prefix + ".jsonl"
            n_train = _write_jsonl(jsonl, train, self.mod)
            n_valid = _write_jsonl(jsonl + ".valid", self.valid, self.mod)
            with open(jsonl, "a", encoding="utf-8") as out, open(jsonl + ".valid", encoding="utf-8") as v:
                out.write(v.read())     # training documents first, validation documents last
            os.remove(jsonl + ".valid")
            _run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", jsonl,
                  "--json-keys", "text", "--tokenizer-type", "SentencePieceTokenizer",
                  "--tokenizer-model", self.tokenizer, "--append-eod", "--output-prefix", prefix,
                  "--workers", "2", "--log-interval", "0"], f"tokenizing {name}")
            os.remove(jsonl)
            with open(meta_path, "w") as f:
                json.dump({"train_docs": n_train, "valid_docs": n_valid}, f)
        with open(meta_path) as f:
            meta = json.load(f)
        return ["--data-path", prefix + "_text_document",
                "--split", f"{meta['train_docs']},{meta['valid_docs']},0",
                "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", self.tokenizer]


class DataPlan:
    """Training-data flags for each regime of a grid, building the corpus on first use."""

    def __init__(self, spec: dict, data_dir: str):
        self.spec = dict(spec or {"mock": True})
        self.data_dir = data_dir
        self._stdlib = None

    def flags(self, regime: dict) -> list:
        """Data flags for one regime: its own `data:` entry if it has one, else the grid's;
        `train_files` selects a smaller stdlib training corpus."""
        if regime.get("data"):
            return DataPlan(regime["data"], self.data_dir).flags({**regime, "data": None})
        s = self.spec
        train_files = int(regime.get("train_files", 0) or 0)
        if s.get("build") == "stdlib":
            if self._stdlib is None:
                self._stdlib = StdlibData(s, self.data_dir)
            return self._stdlib.flags(train_files)
        if train_files:
            raise ValueError("regime option train_files needs data: {build: stdlib}")
        if s.get("mock"):
            return ["--mock-data", "--vocab-size", str(s.get("vocab_size", 512))]
        if "prefix" not in s:
            raise ValueError("grid data: give {mock: true}, {prefix: ..., tokenizer_model: ...} "
                             "or {build: stdlib}")
        prefixes = s["prefix"] if isinstance(s["prefix"], list) else [s["prefix"]]
        out = ["--data-path", *map(str, prefixes), "--split", str(s.get("split", "949,50,1"))]
        if s.get("tokenizer_model"):
            out += ["--tokenizer-type", s.get("tokenizer_type", "SentencePieceTokenizer"),
                    "--tokenizer-model", s["tokenizer_model"]]
        if s.get("data_cache_path"):
            out += ["--data-cache-path", s["data_cache_path"]]
        return out
