"""Streaming readers of raw text corpora for tools/preprocess_data.py.

Formats, by file extension:

    .jsonl / .json   one JSON object per line (Megatron's "loose json"); text under --json-keys;
    (+ .gz)          .jsonl.gz / .json.gz are read through gzip
    .txt             one document per paragraph: a run of lines ended by a blank line
                     (lines of only whitespace count as blank); newlines inside are kept
    .parquet         rows of a table; text in the --json-keys columns (read in row batches)

Readers yield Chunks with records still raw (bytes lines or paragraphs, or dicts for
parquet) and the line (row) number of each, so parsing and decoding happen in the worker
processes, the reading process only splits the input, and an error names `file:line`.
Memory is one chunk per chunk in flight. `--partitions N` keeps every N-th record
(`select_partition`), as Megatron's round-robin partition files do.

Sentence splitting (`split_sentences`, for --split-sentences) is a dependency-free rule
set, not NLTK's punkt: a sentence ends after `.`, `!` or `?` (closing quotes/brackets may
follow) and whitespace, when the next word starts with an upper-case letter, a digit or an
opening quote/bracket, unless the word before the period is a common abbreviation (Mr.,
e.g., etc.) or a single letter (an initial); a blank line always ends a sentence.
"""

import glob
import gzip
import json
import os
import re
from typing import List, NamedTuple

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl",
           ".txt": "txt", ".parquet": "parquet"}


class InputError(ValueError):
    """A bad input record; the message names file:line and what to fix."""


class Chunk(NamedTuple):
    """Raw records of one file, the line (row) number of each, and the input bytes they span."""

    fmt: str
    records: list
    nbytes: int
    path: str
    lines: List[int]


def expand_inputs(patterns):
    """Files named by paths or globs, sorted within each pattern; errors name the bad one."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = []
    for pat in patterns:
        found = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise FileNotFoundError(f"--input {pat}: no such file")
        for f in found:
            if file_format(f) is None:
                raise ValueError(f"--input {f}: unsupported extension; use "
                                 f"{', '.join(FORMATS)}")
        files.extend(found)
    return files


def file_format(path):
    """'jsonl' | 'txt' | 'parquet' | None from the extension (.gz only after .jsonl/.json)."""
    name = path.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    return None


def _open_lines(path):
    """(binary line iterator, raw file) - raw.tell() is the compressed position for .gz."""
    raw = open(path, "rb")
    return (gzip.GzipFile(fileobj=raw) if path.lower().endswith(".gz") else raw), raw


def _line_chunks(path, chunk_bytes):
    lines_in, raw = _open_lines(path)
    chunk, numbers, last = [], [], 0
    with lines_in, raw:
        for number, line in enumerate(lines_in, 1):
            chunk.append(line)
            numbers.append(number)
            if raw.tell() - last >= chunk_bytes:
                yield Chunk("jsonl", chunk, raw.tell() - last, path, numbers)
                chunk, numbers, last = [], [], raw.tell()
        if chunk:
            yield Chunk("jsonl", chunk, raw.tell() - last, path, numbers)


def _paragraph_chunks(path, chunk_bytes):
    chunk, numbers, para, size, first = [], [], [], 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            size += len(line)
            if line.strip():
                first = first if para else number
                para.append(line)
                continue
            if para:
                chunk.append(b"".join(para))
                numbers.append(first)
                para = []
            if size >= chunk_bytes:
                yield Chunk("txt", chunk, size, path, numbers)
                chunk, numbers, size = [], [], 0
    if para:
        chunk.append(b"".join(para))
        numbers.append(first)
    if chunk or size:
        yield Chunk("txt", chunk, size, path, numbers)


def _parquet_chunks(path, keys, rows_per_chunk=1024):
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    missing = [k for k in keys if k not in table.schema_arrow.names]
    if missing:
        raise KeyError(f"{path}: no column {missing}; columns are {table.schema_arrow.names} "
                       "(set --json-keys)")
    per_row = os.path.getsize(path) / max(table.metadata.num_rows, 1)   # file bytes per row
    row = 0
    for batch in table.iter_batches(batch_size=rows_per_chunk, columns=list(keys)):
        yield Chunk("parquet", batch.to_pylist(), int(per_row * batch.num_rows), path,
                    list(range(row, row + batch.num_rows)))
        row += batch.num_rows


def iter_chunks(files, keys, chunk_bytes=1 << 20):
    """Yield the Chunks of every file, in order."""
    for path in files:
        fmt = file_format(path)
        if fmt == "jsonl":
            yield from _line_chunks(path, chunk_bytes)
        elif fmt == "txt":
            yield from _paragraph_chunks(path, chunk_bytes)
        else:
            yield from _parquet_chunks(path, keys)


def select_partition(chunks, index, count):
    """Keep records number index, index + count, ... (over all files): partition `index`."""
    seen = 0
    for c in chunks:
        keep = [i for i in range(len(c.records)) if (seen + i) % count == index]
        seen += len(c.records)
        yield Chunk(c.fmt, [c.records[i] for i in keep], c.nbytes, c.path, [c.lines[i] for i in keep])


def _where(path, fmt, line):
    return f"{path}:{line}" if fmt != "parquet" else f"{path} row {line}"


def record_texts(fmt, record, keys, path="<input>", line=0):
    """{key: text} of one raw record; a .txt paragraph is the text of the first key."""
    if fmt == "txt":
        return {keys[0]: record.decode("utf-8", errors="replace").rstrip("\n")}
    where = _where(path, fmt, line)
    if fmt == "jsonl":
        if not record.strip():
            return {k: "" for k in keys}
        try:
            record = json.loads(record)
        except ValueError as e:
            raise InputError(f"{where}: bad JSON line ({e}): {record[:80]!r}; .jsonl input needs "
                             "one object per line") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: the line holds a JSON {type(record).__name__}, expected an "
                             "object with the --json-keys keys")
    out = {}
    for k in keys:
        if k not in record:
            raise InputError(f"{where}: record has no key {k!r}; its keys are {list(record)} "
                             "(set --json-keys)")
        text = record[k]
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            raise InputError(f"{where}: key {k!r} holds a {kind} ({json.dumps(text)[:40]}), "
                             "expected a string; fix the record or choose other --json-keys")
        out[k] = text
    return out


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e",
                  "fig", "no", "vol", "inc", "ltd", "co", "approx", "dept", "est", "cf", "al"}
_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*\s+|\n\s*\n\s*")
_BLANK = re.compile(r"\n\s*\n")
_STARTS = re.compile(r"[\"'(\[\u201c\u2018]?[^\W\d_a-z]|[\"'(\[\u201c\u2018]?\d")


def _is_boundary(text, m):
    if "\n" in m.group() and _BLANK.search(m.group()) or m.end() == len(text):
        return True
    if not _STARTS.match(text, m.end()) or text[m.end()].islower():
        return False
    if text[m.start()] != ".":
        return True
    word = text[:m.start()].rsplit(None, 1)[-1].lstrip("\"'([") if text[:m.start()].strip() else ""
    return not (word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))


def split_sentences(text, keep_newlines=False):
    """Sentences of text (see the module docstring). With keep_newlines each sentence keeps the
    whitespace after it, so their concatenation is the text; else they are stripped."""
    out, start = [], 0
    for m in _END.finditer(text):
        if _is_boundary(text, m):
            out.append(text[start:m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    if keep_newlines:
        return out
    return [s.strip() for s in out if s.strip()]
