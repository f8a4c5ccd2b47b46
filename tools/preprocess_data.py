"""Tokenize a text corpus into Megatron `.bin/.idx` files (Megatron-LM's flags and outputs).

    python tools/preprocess_data.py --input 'corpus/*.jsonl' --json-keys text \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model \
        --output-prefix data/corpus --workers 8 --append-eod

writes data/corpus_text_document.{bin,idx} (one pair per --json-keys key). Inputs are
.jsonl/.json (one object per line), .txt (one document per blank-line-separated
paragraph) or .parquet, given as files or globs, read in order into one output.

Streaming: the main process only cuts the input into ~1 MB chunks; workers decode, parse
and tokenize them (Pool.imap, ordered), and the main process appends their tokens to the
.bin. A semaphore bounds the chunks in flight (Pool.imap alone reads its whole input
ahead), so memory stays flat however large the corpus.
"""

import argparse
import multiprocessing
import os
import sys
import threading
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaclap.data.indexed_dataset import IndexedDatasetBuilder, best_dtype  # noqa: E402
from megaclap.data.text_readers import expand_inputs, iter_chunks, record_texts  # noqa: E402
from megaclap.data.tokenizers import build_tokenizer  # noqa: E402


class Encoder:
    """Tokenizes chunks; one tokenizer per worker process, built by `initializer`."""

    tokenizer = None
    args = None

    @classmethod
    def initializer(cls, args):
        cls.args = args
        cls.tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)

    @classmethod
    def encode_chunk(cls, chunk):
        """(fmt, records, nbytes) -> (nbytes, n, {key: (tokens int32 [T], lengths int64 [n])})."""
        fmt, records, nbytes = chunk
        keys, eod = cls.args.json_keys, cls.tokenizer.eod
        ids = {k: [] for k in keys}
        for record in records:
            for key, text in record_texts(fmt, record, keys).items():
                tokens = cls.tokenizer.tokenize(text) if text else []
                if tokens and cls.args.append_eod:
                    tokens.append(eod)
                ids[key].append(np.asarray(tokens, np.int32))   # 4 B/token, not a list
        out = {}
        for key, docs in ids.items():
            lengths = np.fromiter((len(d) for d in docs), np.int64, len(docs))
            flat = np.concatenate(docs) if docs else np.zeros(0, np.int32)
            out[key] = (flat, lengths)
        return nbytes, len(records), out


def _gated(chunks, sem, stop):
    """Yield chunks, each only after a slot frees up (bounds the chunks in flight)."""
    for chunk in chunks:
        while not sem.acquire(timeout=0.1):
            if stop.is_set():
                return
        yield chunk


def _results(args, chunks):
    """Encoded chunks in input order, from `args.workers` processes (1: in-process)."""
    if args.workers <= 1:
        Encoder.initializer(args)
        for chunk in chunks:
            yield Encoder.encode_chunk(chunk)
        return
    sem, stop = threading.Semaphore(4 * args.workers), threading.Event()
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ctx.Pool(args.workers, initializer=Encoder.initializer, initargs=(args,))
    try:
        for result in pool.imap(Encoder.encode_chunk, _gated(chunks, sem, stop)):
            sem.release()
            yield result
        pool.close()
    finally:
        stop.set()
        pool.terminate()
        pool.join()


def output_prefix(prefix, key, level="document"):
    """Megatron's naming: <prefix>_<key>_<level>."""
    return f"{prefix}_{key}_{level}"


def preprocess(args):
    """Tokenize args.input into one .bin/.idx pair per key; returns a summary dict."""
    files = expand_inputs(args.input)
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
    dtype = best_dtype(tokenizer.vocab_size)
    out_dir = os.path.dirname(args.output_prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    builders = {k: IndexedDatasetBuilder(output_prefix(args.output_prefix, k) + ".bin", dtype)
                for k in args.json_keys}
    total = sum(os.path.getsize(f) for f in files)
    docs, done, start = 0, 0, time.perf_counter()
    bar = _progress(total, args)
    for nbytes, ndocs, encoded in _results(args, iter_chunks(files, args.json_keys)):
        for key, (flat, lengths) in encoded.items():
            builders[key].add_documents(flat, lengths)
        docs, done = docs + ndocs, done + nbytes
        if bar is not None:
            bar.update(nbytes)
            if args.log_interval and docs // args.log_interval != (docs - ndocs) // args.log_interval:
                bar.set_postfix(docs=docs)
    if bar is not None:
        bar.close()
    for key, builder in builders.items():
        builder.finalize(output_prefix(args.output_prefix, key) + ".idx")
    elapsed = time.perf_counter() - start
    summary = {"documents": docs, "bytes": done, "seconds": elapsed,
               "mb_per_s": done / 1e6 / max(elapsed, 1e-9), "dtype": np.dtype(dtype).name,
               "skipped_empty": {k: b.skipped_empty for k, b in builders.items()},
               "outputs": [output_prefix(args.output_prefix, k) for k in args.json_keys]}
    return summary


def _progress(total, args):
    if args.log_interval <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing",
                mininterval=1.0, file=sys.stderr)


def get_args(argv=None):
    """Megatron-LM's preprocess_data.py flags (the ones that apply to GPT data)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    g = p.add_argument_group("input data")
    g.add_argument("--input", required=True, nargs="+", help="files or globs (.jsonl .json .txt .parquet)")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys/columns to tokenize")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True,
                   choices=["SentencePieceTokenizer", "GPTSentencePieceTokenizer",
                            "HuggingFaceTokenizer", "NullTokenizer"])
    g.add_argument("--tokenizer-model", default=None, help="sentencepiece .model or tokenizer.json")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer vocabulary size")
    g.add_argument("--append-eod", action="store_true", help="append the eod token to each document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    g.add_argument("--log-interval", type=int, default=1000,
                   help="documents between progress updates (0: no progress bar)")
    return p.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    summary = preprocess(args)
    print(f"done: {summary['documents']} documents, {summary['bytes'] / 1e6:.1f} MB in "
          f"{summary['seconds']:.1f} s ({summary['mb_per_s']:.2f} MB/s), dtype {summary['dtype']}, "
          f"skipped empty: {summary['skipped_empty']} -> {', '.join(summary['outputs'])}")
    return summary


if __name__ == "__main__":
    main()
