"""Tokenize a text corpus into Megatron `.bin/.idx` files (Megatron-LM's flags and outputs).

    python tools/preprocess_data.py --input 'corpus/*.jsonl.gz' --json-keys text \
        --tokenizer-type GPT2BPETokenizer --vocab-file gpt2-vocab.json \
        --merge-file gpt2-merges.txt --output-prefix data/corpus --workers 8 --append-eod

writes data/corpus_text_document.{bin,idx} (one pair per --json-keys key; `_sentence`
instead of `_document` with --split-sentences). Inputs are .jsonl/.json (optionally .gz;
one object per line), .txt (one document per blank-line-separated paragraph) or .parquet,
given as files or globs, read in order into one output.

Streaming: the main process only cuts the input into ~1 MB chunks; workers decode, parse
and tokenize them (Pool.imap, ordered), and the main process appends their tokens to the
.bin. A semaphore bounds the chunks in flight (Pool.imap alone reads its whole input
ahead), so memory stays flat however large the corpus. `--partitions N` runs N such
pipelines (workers / N processes each) on records i % N == p, as Megatron's round-robin
partitions, and merges their outputs in partition order.

Nothing is written unless the whole run succeeds: every output goes to `<name>.tmp-<pid>.*`
first and is renamed into place at the end, so a failed run leaves earlier files intact, and
each output prefix is locked for the run (`<name>.lock`): a second run into it is refused.
A bad record (bad JSON, missing key, a list or other non-string value) stops the run with
`file:line` and the key; an input without any non-empty document is an error. An input whose
text is mostly undecodable bytes or control characters (a binary file, another encoding) is
written but warned about.
"""

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaclap.config.data import TOKENIZER_TYPES  # noqa: E402
from megaclap.data.indexed_dataset import IndexedDatasetBuilder, best_dtype  # noqa: E402
from megaclap.data.text_readers import (InputError, expand_inputs, iter_chunks, record_texts,  # noqa: E402
                                        select_partition, split_sentences)
from megaclap.data.tokenizers import build_tokenizer  # noqa: E402
from megaclap.errors import run_tool  # noqa: E402
from megaclap.locks import lock_prefix  # noqa: E402

# U+FFFD (bytes that are not UTF-8) and C0 control characters other than tab and newlines
_NOT_TEXT = dict.fromkeys([0xFFFD, *range(0, 9), 11, 12, *range(14, 32), 127])
NOT_TEXT_WARNING = 0.1  # warn when more than this fraction of a file's characters are not text


def _tokenizer(args):
    return build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size,
                           args.vocab_file, args.merge_file, args.legacy_null_tokenizer)


class Encoder:
    """Tokenizes chunks; one tokenizer per worker process, built by `initializer`."""

    tokenizer = None
    args = None

    @classmethod
    def initializer(cls, args):
        cls.args = args
        cls.tokenizer = _tokenizer(args)

    @classmethod
    def _document(cls, text):
        """One document -> list of sequences (sentences with --split-sentences), eod on the last."""
        tok, args = cls.tokenizer, cls.args
        if not args.split_sentences:   # one sequence, even when empty (the builder skips it)
            ids = list(tok.tokenize(text)) if text else []
            return [ids + [tok.eod] if ids and args.append_eod else ids]
        seqs = [ids for ids in (tok.tokenize(p) for p in split_sentences(text, args.keep_newlines)) if ids]
        if seqs and args.append_eod:
            seqs[-1] = list(seqs[-1]) + [tok.eod]
        return seqs

    @classmethod
    def encode_chunk(cls, chunk):
        """Chunk -> (nbytes, n, {key: (tokens int32 [T], seq lengths int64 [S], seqs per doc [n])},
        (path, characters that are not text, characters))."""
        keys = cls.args.json_keys
        seqs = {k: [] for k in keys}
        counts = {k: [] for k in keys}
        bad = chars = 0
        for record, line in zip(chunk.records, chunk.lines):
            for key, text in record_texts(chunk.fmt, record, keys, chunk.path, line).items():
                bad += len(text) - len(text.translate(_NOT_TEXT))
                chars += len(text)
                doc = cls._document(text)
                seqs[key].extend(np.asarray(s, np.int32) for s in doc)   # 4 B/token, not a list
                counts[key].append(len(doc))
        out = {}
        for key in keys:
            lengths = np.fromiter((len(s) for s in seqs[key]), np.int64, len(seqs[key]))
            flat = np.concatenate(seqs[key]) if seqs[key] else np.zeros(0, np.int32)
            out[key] = (flat, lengths, np.asarray(counts[key], np.int64))
        return chunk.nbytes, len(chunk.records), out, (chunk.path, bad, chars)


def _gated(chunks, sem, stop):
    """Yield chunks, each only after a slot frees up (bounds the chunks in flight)."""
    for chunk in chunks:
        while not sem.acquire(timeout=0.1):
            if stop.is_set():
                return
        yield chunk


def _results(args, chunks, workers):
    """Encoded chunks in input order, from `workers` processes (1: in-process)."""
    if workers <= 1:
        Encoder.initializer(args)
        for chunk in chunks:
            yield Encoder.encode_chunk(chunk)
        return
    sem, stop = threading.Semaphore(4 * workers), threading.Event()
    pool = _ctx().Pool(workers, initializer=Encoder.initializer, initargs=(args,))
    try:
        for result in pool.imap(Encoder.encode_chunk, _gated(chunks, sem, stop)):
            sem.release()
            yield result
        pool.close()
    finally:
        stop.set()
        pool.terminate()
        pool.join()


def _ctx():
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def output_prefix(prefix, key, level="document"):
    """Megatron's naming: <prefix>_<key>_<level>."""
    return f"{prefix}_{key}_{level}"


def _remove(*prefixes):
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if os.path.exists(prefix + ext):
                os.remove(prefix + ext)


def _add(builder, flat, lengths, per_doc):
    if (per_doc == 1).all():          # one sequence per document: the fast path
        builder.add_documents(flat, lengths)
        return
    seq = tok = 0
    for n in per_doc.tolist():
        size = int(lengths[seq:seq + n].sum())
        builder.add_document(flat[tok:tok + size], lengths[seq:seq + n].tolist())
        seq, tok = seq + n, tok + size


def encode_files(args, files, prefixes, dtype, partition=None, workers=1, bar=None):
    """Tokenize files (or one partition of their records) into a .bin/.idx pair per key at
    prefixes {key: prefix}; returns (records, bytes, {key: empty documents skipped},
    {file: [characters that are not text, characters]})."""
    builders = {k: IndexedDatasetBuilder(p + ".bin", dtype) for k, p in prefixes.items()}
    records = done = 0
    text_counts: dict = {}
    try:
        chunks = iter_chunks(files, args.json_keys)
        if partition is not None:
            chunks = select_partition(chunks, *partition)
        for nbytes, n, encoded, (path, bad, chars) in _results(args, chunks, workers):
            for key, parts in encoded.items():
                _add(builders[key], *parts)
            records, done = records + n, done + nbytes
            counted = text_counts.setdefault(path, [0, 0])
            counted[0], counted[1] = counted[0] + bad, counted[1] + chars
            if bar is not None:
                bar.update(nbytes)
        for key, builder in builders.items():
            builder.finalize(prefixes[key] + ".idx")
    except BaseException:
        for builder in builders.values():
            builder._out.close()   # the builder has no abort(); its .bin is removed next
        _remove(*prefixes.values())
        raise
    return records, done, {k: b.skipped_empty for k, b in builders.items()}, text_counts


def _partition_main(args, files, prefixes, dtype, index, workers, conn):
    try:
        conn.send(("ok", encode_files(args, files, prefixes, dtype, (index, args.partitions), workers)))
    except BaseException as e:   # report to the parent, which raises it once
        conn.send(("error", type(e).__name__, str(e.args[0]) if isinstance(e, KeyError) else str(e)))
    finally:
        conn.close()


def encode_partitions(args, files, tmps, dtype):
    """--partitions N: N processes encode records i % N == p into part files, merged in order
    into the pairs at prefixes tmps {key: prefix}."""
    n, workers = args.partitions, max(1, args.workers // args.partitions)
    parts = [{k: f"{f}.part{p}" for k, f in tmps.items()} for p in range(n)]
    procs = []
    try:
        for p in range(n):
            recv, send = _ctx().Pipe(duplex=False)
            proc = _ctx().Process(target=_partition_main, args=(args, files, parts[p], dtype, p, workers, send))
            proc.start()
            send.close()
            procs.append((proc, recv))
        results, pending = {}, {recv: p for p, (_, recv) in enumerate(procs)}
        while pending:   # the first error stops every partition
            for recv in multiprocessing.connection.wait(list(pending)):
                p = pending.pop(recv)
                try:
                    msg = recv.recv()
                except EOFError:
                    procs[p][0].join()
                    msg = ("error", "", f"partition {p} died (exit code {procs[p][0].exitcode})")
                if msg[0] == "error":
                    raise (FileNotFoundError if msg[1] == "FileNotFoundError" else InputError)(msg[2])
                results[p] = msg[1]
        results = [results[p] for p in range(n)]
        for key, tmp in tmps.items():
            builder = IndexedDatasetBuilder(tmp + ".bin", dtype)
            for p in range(n):
                builder.add_index(parts[p][key])
            builder.finalize(tmp + ".idx")
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        _remove(*[q for part in parts for q in part.values()])
    skipped = {k: sum(r[2][k] for r in results) for k in tmps}
    text_counts: dict = {}
    for r in results:
        for path, (bad, chars) in r[3].items():
            counted = text_counts.setdefault(path, [0, 0])
            counted[0], counted[1] = counted[0] + bad, counted[1] + chars
    return sum(r[0] for r in results), sum(r[1] for r in results), skipped, text_counts


def preprocess(args):
    """Tokenize args.input into one .bin/.idx pair per key; returns a summary dict."""
    if args.partitions < 1 or args.workers < 1:
        raise ValueError(f"--partitions {args.partitions} / --workers {args.workers}: must be >= 1")
    files = expand_inputs(args.input)
    dtype = best_dtype(_tokenizer(args).vocab_size)
    level = "sentence" if args.split_sentences else "document"
    finals = {k: output_prefix(args.output_prefix, k, level) for k in args.json_keys}
    tmps = {k: f"{f}.tmp-{os.getpid()}" for k, f in finals.items()}
    start = time.perf_counter()
    with contextlib.ExitStack() as locks:
        for final in sorted(set(finals.values())):
            locks.enter_context(lock_prefix(final, f"--output-prefix {args.output_prefix} ({final})"))
        records, done, skipped, text_counts = _encode_and_commit(args, files, finals, tmps, dtype)
    elapsed = time.perf_counter() - start
    not_text = {path: bad / chars for path, (bad, chars) in text_counts.items()
                if chars and bad / chars > NOT_TEXT_WARNING}
    return {"documents": records, "bytes": done, "seconds": elapsed,
            "mb_per_s": done / 1e6 / max(elapsed, 1e-9), "dtype": np.dtype(dtype).name,
            "skipped_empty": skipped, "outputs": list(finals.values()), "not_text": not_text}


def _encode_and_commit(args, files, finals, tmps, dtype):
    """Encode into the tmps, then rename every output into place (only if all succeeded)."""
    try:
        if args.partitions > 1:
            records, done, skipped, text_counts = encode_partitions(args, files, tmps, dtype)
        else:
            bar = _progress(sum(os.path.getsize(f) for f in files), args)
            records, done, skipped, text_counts = encode_files(args, files, tmps, dtype, None, args.workers, bar)
            if bar is not None:
                bar.close()
        empty = [k for k in finals if records - skipped[k] == 0]
        if empty:
            raise InputError(f"no documents: --input {' '.join(args.input)} holds no non-empty "
                             f"{', '.join(repr(k) for k in empty)} text; nothing was written")
        for key, final in finals.items():   # commit: every output renamed only now
            for ext in (".bin", ".idx"):
                os.replace(tmps[key] + ext, final + ext)
    finally:
        _remove(*tmps.values())
    return records, done, skipped, text_counts


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
    g.add_argument("--input", required=True, nargs="+",
                   help="files or globs (.jsonl .json .jsonl.gz .json.gz .txt .parquet)")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys/columns to tokenize")
    g.add_argument("--split-sentences", action="store_true",
                   help="split documents into sentences (one sequence each; rule-based splitter, "
                        "see megaclap/data/text_readers.py); outputs are named _sentence")
    g.add_argument("--keep-newlines", action="store_true",
                   help="with --split-sentences: keep the whitespace and newlines between sentences")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model, or tokenizer.json / a directory with it or vocab.json + merges.txt")
    g.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer's vocab.json")
    g.add_argument("--merge-file", default=None, help="GPT2BPETokenizer's merges.txt")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="NullTokenizer vocabulary size V (end-of-document id V - 1)")
    g.add_argument("--legacy-null-tokenizer", action="store_true",
                   help="NullTokenizer as Megatron-LM before core 0.18: end-of-document id V (V + 1 ids)")
    g.add_argument("--append-eod", action="store_true", help="append the eod token to each document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="writes <prefix>_<key>_document.{bin,idx}")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes (in all partitions)")
    g.add_argument("--partitions", type=int, default=1,
                   help="split the records round-robin into this many partitions, encoded in "
                        "parallel (workers / partitions processes each) and merged in order")
    g.add_argument("--log-interval", type=int, default=1000,
                   help="0: no progress bar (the bar is off with --partitions > 1)")
    return p.parse_args(argv)


def main(argv=None):
    """Run with argv; errors are raised (cli() turns them into one line and exit code 2)."""
    args = get_args(argv)
    summary = preprocess(args)
    for path, fraction in summary["not_text"].items():
        print(f"preprocess_data.py: warning: {path}: {fraction:.0%} of its characters are undecodable bytes "
              "(U+FFFD) or control characters: is it text in UTF-8? (a binary file or another encoding); its "
              "documents were written", file=sys.stderr)
    print(f"done: {summary['documents']} documents, {summary['bytes'] / 1e6:.1f} MB in "
          f"{summary['seconds']:.1f} s ({summary['mb_per_s']:.2f} MB/s), dtype {summary['dtype']}, "
          f"skipped empty: {summary['skipped_empty']} -> {', '.join(summary['outputs'])}")
    return summary


def cli(argv=None):
    """main() with known problems as one line and exit code 2 (the traceback goes to a file)."""
    return run_tool("preprocess_data.py", main, argv, known=(ValueError, KeyError))


if __name__ == "__main__":
    sys.exit(cli())
