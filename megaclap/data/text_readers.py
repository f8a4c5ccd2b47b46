"""Streaming readers of raw text corpora for tools/preprocess_data.py.

Formats, by file extension:

    .jsonl / .json   one JSON object per line (Megatron's "loose json"); text under --json-keys
    .txt             one document per paragraph: a run of lines ended by a blank line
                     (lines of only whitespace count as blank); newlines inside are kept
    .parquet         rows of a table; text in the --json-keys columns (read in row batches)

Readers yield *chunks*: (format, records, nbytes) with records still raw (bytes lines or
paragraphs, or dicts for parquet), so parsing and decoding happen in the worker processes
and the reading process only splits the input. Memory is one chunk per chunk in flight.
"""

import glob
import json
import os

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt", ".parquet": "parquet"}


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
    """'jsonl' | 'txt' | 'parquet' | None from the extension."""
    return FORMATS.get(os.path.splitext(path)[1].lower())


def _line_chunks(path, chunk_bytes):
    chunk, size = [], 0
    with open(path, "rb") as f:
        for line in f:
            chunk.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield "jsonl", chunk, size
                chunk, size = [], 0
    if chunk:
        yield "jsonl", chunk, size


def _paragraph_chunks(path, chunk_bytes):
    chunk, para, size = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            size += len(line)
            if line.strip():
                para.append(line)
                continue
            if para:
                chunk.append(b"".join(para))
                para = []
            if size >= chunk_bytes:
                yield "txt", chunk, size
                chunk, size = [], 0
    if para:
        chunk.append(b"".join(para))
    if chunk or size:
        yield "txt", chunk, size


def _parquet_chunks(path, keys, rows_per_chunk=1024):
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    missing = [k for k in keys if k not in table.schema_arrow.names]
    if missing:
        raise KeyError(f"{path}: no column {missing}; columns are {table.schema_arrow.names} "
                       "(set --json-keys)")
    per_row = os.path.getsize(path) / max(table.metadata.num_rows, 1)   # file bytes per row
    for batch in table.iter_batches(batch_size=rows_per_chunk, columns=list(keys)):
        yield "parquet", batch.to_pylist(), int(per_row * batch.num_rows)


def iter_chunks(files, keys, chunk_bytes=1 << 20):
    """Yield (format, records, nbytes) chunks of every file, in order."""
    for path in files:
        fmt = file_format(path)
        if fmt == "jsonl":
            yield from _line_chunks(path, chunk_bytes)
        elif fmt == "txt":
            yield from _paragraph_chunks(path, chunk_bytes)
        else:
            yield from _parquet_chunks(path, keys)


def record_texts(fmt, record, keys):
    """{key: text} of one raw record; a .txt paragraph is the text of the first key."""
    if fmt == "txt":
        return {keys[0]: record.decode("utf-8", errors="replace").rstrip("\n")}
    if fmt == "jsonl":
        if not record.strip():
            return {k: "" for k in keys}
        try:
            record = json.loads(record)
        except ValueError as e:
            raise ValueError(f"bad JSON line ({e}): {record[:80]!r}; .jsonl input needs one "
                             "object per line") from None
    try:
        return {k: record[k] or "" for k in keys}
    except KeyError as e:
        raise KeyError(f"record has no key {e}; its keys are {list(record)} "
                       "(set --json-keys)") from None
