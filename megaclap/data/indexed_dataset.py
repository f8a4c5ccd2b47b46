"""Megatron-LM's MMIDIDX `.bin/.idx` token files: a memmap reader and a streaming writer.

Byte layout of `<prefix>.idx` (little endian), identical to Megatron-LM's
`megatron/core/datasets/indexed_dataset.py`, so files move between the two both ways:

    offset 0   9 bytes   magic b"MMIDIDX\\x00\\x00"
    offset 9   <Q        version (1)
    offset 17  <B        dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                                     6 float64, 7 float32, 8 uint16)
    offset 18  <Q        S: sequence count
    offset 26  <Q        D: document count (= documents + 1)
    offset 34  int32[S]  sequence lengths (tokens)
               int64[S]  sequence byte pointers into `<prefix>.bin`
               int64[D]  document indices: sequence index where each document starts,
                         starting at 0 and ending at S

`<prefix>.bin` is the raw token stream, sequences back to back in the dtype above.
A GPT corpus has one sequence per document; sentence-split corpora have several.
"""

import os
import shutil
import struct
from array import array

import numpy as np

from megaclap.errors import UserValueError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 34  # magic 9 + version 8 + dtype 1 + sequence count 8 + document count 8

DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(UserValueError):
    """A `.bin/.idx` pair failed a format check; the message names the check (a ValueError
    and a megaclap.errors.UserError: the job ends with this one line)."""


def best_dtype(vocab_size):
    """Token dtype for a vocabulary: uint16 below 65500 entries (as Megatron), else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def idx_path(prefix):
    """Path of the index file for a dataset prefix."""
    return prefix + ".idx"


def bin_path(prefix):
    """Path of the token file for a dataset prefix."""
    return prefix + ".bin"


def read_index_header(path):
    """Parse and check an `.idx` header; returns (dtype, sequence_count, document_count)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:9] != MAGIC:
        raise IndexedDatasetError(f"{path}: bad magic {head[:9]!r}, expected {MAGIC!r}: "
                                  "not a Megatron MMIDIDX index")
    if len(head) < HEADER_BYTES:
        raise IndexedDatasetError(f"{path}: truncated .idx: header is {len(head)} bytes, "
                                  f"expected {HEADER_BYTES}")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != VERSION:
        raise IndexedDatasetError(f"{path}: unsupported version {version}, expected {VERSION}")
    (code,) = struct.unpack("<B", head[17:18])
    if code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{path}: unknown dtype code {code}, "
                                  f"expected one of {sorted(DTYPE_CODES)}")
    seq_count, doc_count = struct.unpack("<QQ", head[18:34])
    need = HEADER_BYTES + seq_count * (4 + 8) + doc_count * 8
    if size < need:
        raise IndexedDatasetError(f"{path}: truncated .idx: {size} bytes, but S={seq_count} "
                                  f"sequences and D={doc_count} documents need {need}")
    return np.dtype(DTYPE_CODES[code]), seq_count, doc_count


class IndexedDataset:
    """Read-only view of a Megatron `.bin/.idx` pair.

    `ds[i]` is sequence i as a numpy array (zero-copy from the memmap when mmap=True),
    `ds.get(i, offset, length)` a part of it. With mmap=False tokens are read with
    `os.preadv` instead, so touched pages never count towards this process's RSS
    (the page cache still serves repeats); the training loader uses that mode.
    """

    def __init__(self, path_prefix, mmap=True):
        self.path_prefix = path_prefix
        self.mmap = mmap
        ipath, bpath = idx_path(path_prefix), bin_path(path_prefix)
        for p in (ipath, bpath):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p} not found: --data-path takes the prefix of a "
                                        "<prefix>.bin/<prefix>.idx pair written by preprocess_data")
        self.dtype, seq_count, doc_count = read_index_header(ipath)
        self._idx = np.memmap(ipath, dtype=np.uint8, mode="r")
        off = HEADER_BYTES
        # lengths [S] int32 | pointers [S] int64 | document_indices [D] int64
        self.sequence_lengths = np.frombuffer(self._idx, np.int32, seq_count, off)
        off += 4 * seq_count
        self.sequence_pointers = np.frombuffer(self._idx, np.int64, seq_count, off)
        off += 8 * seq_count
        self.document_indices = np.frombuffer(self._idx, np.int64, doc_count, off)
        self._check(ipath, bpath)
        self._fd = os.open(bpath, os.O_RDONLY)
        self._bin = None
        if mmap:
            self._bin = np.memmap(bpath, dtype=self.dtype, mode="r")

    def _check(self, ipath, bpath):
        """Refuse empty datasets, bad document indices, negative sequence lengths, pointers that
        do not follow from the lengths, and a .bin whose size is not exactly what they describe.

        Lengths and pointers are scanned with plain reads in chunks (12 bytes per sequence, no
        memmap pages kept); the other checks are O(1).
        """
        seqs, docs = len(self.sequence_lengths), self.document_indices
        if seqs == 0 or len(docs) < 2:
            raise IndexedDatasetError(f"{ipath}: empty dataset (S={seqs} sequences, "
                                      f"D={len(docs)} document indices, no tokens)")
        if docs[0] != 0 or docs[-1] > seqs:
            raise IndexedDatasetError(f"{ipath}: bad document indices: they must rise from 0 "
                                      f"to at most S={seqs}")
        end = self._check_sequences(ipath, seqs)
        if end == 0:
            raise IndexedDatasetError(f"{ipath}: empty dataset (S={seqs} sequences, no tokens)")
        have = os.path.getsize(bpath)
        if have < end:
            raise IndexedDatasetError(f"{bpath}: .bin too short: {have} bytes, but the .idx "
                                      f"pointers need {end}; the .bin is truncated or stale")
        if have > end:
            raise IndexedDatasetError(f"{bpath}: .bin is {have} bytes but its .idx describes {end}: the "
                                      ".bin belongs to another run (or the .idx to an older one); re-run "
                                      "tools/preprocess_data.py for this prefix")

    def _check_sequences(self, ipath, seqs, chunk=1 << 22):
        """Scan lengths (non-negative) and pointers (pointer[i] = bytes of the sequences before i,
        as every MMIDIDX writer lays them out); returns the .bin size they describe."""
        itemsize, end = self.dtype.itemsize, 0
        with open(ipath, "rb") as lengths_file, open(ipath, "rb") as pointers_file:
            lengths_file.seek(HEADER_BYTES)
            pointers_file.seek(HEADER_BYTES + 4 * seqs)
            for start in range(0, seqs, chunk):
                n = min(chunk, seqs - start)
                lengths = np.fromfile(lengths_file, np.int32, n)
                pointers = np.fromfile(pointers_file, np.int64, n)
                if lengths.min() < 0:
                    i = int(np.argmax(lengths < 0))
                    raise IndexedDatasetError(f"{ipath}: sequence {start + i} has negative length {int(lengths[i])}: "
                                              "the .idx is corrupt; re-run tools/preprocess_data.py")
                expected = np.empty(n, np.int64)
                expected[0] = end
                np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=expected[1:])
                expected[1:] += end
                bad = np.flatnonzero(pointers != expected)
                if bad.size:
                    i = int(bad[0])
                    raise IndexedDatasetError(
                        f"{ipath}: sequence {start + i} starts at byte {int(pointers[i])} of the .bin, but the "
                        f"lengths before it put it at {int(expected[i])} ({self.dtype} tokens): the dtype byte or "
                        "the pointers are corrupt, or the .idx belongs to another .bin; re-run "
                        "tools/preprocess_data.py")
                end = int(expected[-1]) + int(lengths[-1]) * itemsize
        return end

    def __len__(self):
        """Number of sequences (S)."""
        return len(self.sequence_lengths)

    @property
    def num_documents(self):
        """Number of documents (D - 1)."""
        return len(self.document_indices) - 1

    @property
    def num_tokens(self):
        """Total number of tokens in the .bin."""
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def __getitem__(self, idx):
        """Sequence idx (int) as an array, or a list of arrays for a contiguous slice."""
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError("slices into an IndexedDataset must be contiguous")
            return [self.get(i) for i in range(start, stop)]
        return self.get(int(idx))

    def get(self, idx, offset=0, length=None):
        """Tokens [offset, offset + length) of sequence idx (all of the rest by default)."""
        if length is None:
            length = int(self.sequence_lengths[idx]) - offset
        if self._bin is not None:
            start = int(self.sequence_pointers[idx]) // self.dtype.itemsize + offset
            return self._bin[start:start + length]
        out = np.empty(length, self.dtype)
        self.read_into(out, idx, offset)
        return out

    def read_into(self, out, idx, offset=0):
        """Fill the 1-D array `out` (this dataset's dtype) with len(out) tokens of sequence
        idx from token `offset` on, with one pread (no memmap pages touched)."""
        nbytes = out.nbytes
        if nbytes == 0:
            return
        pos = int(self.sequence_pointers[idx]) + offset * self.dtype.itemsize
        got = os.preadv(self._fd, [memoryview(out).cast("B")], pos)
        if got != nbytes:
            raise IndexedDatasetError(f"{bin_path(self.path_prefix)}: .bin too short: short "
                                      f"read at byte {pos} ({got} of {nbytes})")

    def close(self):
        """Release the file descriptor (the memmaps go with the object)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    @staticmethod
    def exists(path_prefix):
        """Whether both `<prefix>.idx` and `<prefix>.bin` exist."""
        return os.path.exists(idx_path(path_prefix)) and os.path.exists(bin_path(path_prefix))


class IndexedDatasetBuilder:
    """Streaming writer of a `.bin/.idx` pair (Megatron's IndexedDatasetBuilder API).

    Tokens go straight to the .bin; only per-sequence lengths and per-document indices
    stay in memory (compact `array`s, 12 bytes per sequence). Empty documents are skipped
    and counted in `skipped_empty`, since they would only add index entries.
    """

    def __init__(self, bin_file, dtype=np.int32):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no MMIDIDX code")
        self.bin_file = bin_file
        self._out = open(bin_file, "wb", buffering=1 << 20)
        self.sequence_lengths = array("i")   # int32 [S]
        self.document_indices = array("q", [0])  # int64 [D]
        self.skipped_empty = 0
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None

    def _as_dtype(self, tokens):
        """Tokens as a contiguous array of the file dtype; refuses values that do not fit."""
        arr = np.asarray(tokens)
        if arr.dtype != self.dtype and arr.size and self._info is not None:
            lo, hi = arr.min(), arr.max()
            if lo < self._info.min or hi > self._info.max:
                raise ValueError(f"token ids in [{lo}, {hi}] do not fit {self.dtype}: build "
                                 "the builder with a wider dtype (best_dtype(vocab_size))")
        return np.ascontiguousarray(arr, dtype=self.dtype).reshape(-1)

    def add_item(self, tokens):
        """Append one sequence to the current document (empty ones are ignored)."""
        arr = self._as_dtype(tokens)
        if arr.size == 0:
            return
        self._out.write(arr.tobytes())
        self.sequence_lengths.append(arr.size)

    def end_document(self):
        """Close the current document; a document without tokens is skipped and counted."""
        if len(self.sequence_lengths) == self.document_indices[-1]:
            self.skipped_empty += 1
            return
        self.document_indices.append(len(self.sequence_lengths))

    def add_document(self, tokens, lengths=None):
        """Append a whole document; `lengths` splits it into sequences (default: one)."""
        arr = self._as_dtype(tokens)
        if lengths is None:
            lengths = [arr.size]
        if sum(lengths) != arr.size:
            raise ValueError(f"lengths sum to {sum(lengths)} but the document has {arr.size} tokens")
        if arr.size:
            self._out.write(arr.tobytes())
            self.sequence_lengths.extend(int(n) for n in lengths if n > 0)
        self.end_document()

    def add_documents(self, tokens, lengths):
        """Append many one-sequence documents at once: tokens [sum(lengths)], lengths [n]."""
        arr, lengths = self._as_dtype(tokens), np.asarray(lengths, np.int64)
        if int(lengths.sum()) != arr.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but there are {arr.size} tokens")
        kept = lengths[lengths > 0]
        self.skipped_empty += len(lengths) - len(kept)
        self._out.write(arr.tobytes())
        base = len(self.sequence_lengths)
        self.sequence_lengths.extend(kept.astype(np.int32).tolist())
        self.document_indices.extend(range(base + 1, base + len(kept) + 1))

    def add_index(self, path_prefix):
        """Append every document of another `.bin/.idx` pair (same dtype), for merging."""
        other = IndexedDataset(path_prefix, mmap=False)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(f"{path_prefix}: dtype mismatch: {other.dtype} vs the "
                                      f"builder's {self.dtype}; merge shards of one tokenizer")
        base = len(self.sequence_lengths)
        self.sequence_lengths.extend(np.asarray(other.sequence_lengths, np.int32).tolist())
        self.document_indices.extend((other.document_indices[1:] + base).tolist())
        other.close()
        self._out.flush()
        with open(bin_path(path_prefix), "rb") as f:
            shutil.copyfileobj(f, self._out, 1 << 22)

    def finalize(self, idx_file):
        """Close the .bin and write the .idx (byte-identical to Megatron's writer)."""
        self._out.close()
        lengths = np.frombuffer(self.sequence_lengths, np.int32) if self.sequence_lengths \
            else np.zeros(0, np.int32)
        docs = np.frombuffer(self.document_indices, np.int64)
        write_index(idx_file, self.dtype, lengths, docs)


def write_index(path, dtype, sequence_lengths, document_indices):
    """Write an `.idx` for sequences stored back to back (pointers follow from lengths)."""
    lengths = np.asarray(sequence_lengths, np.int32)
    # pointers [S] int64: exclusive cumulative byte offsets
    pointers = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF_DTYPE[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(document_indices)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.asarray(document_indices, np.int64).tobytes())
