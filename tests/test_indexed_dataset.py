"""Megatron MMIDIDX .bin/.idx: round trips, byte layout, refusal of corrupt files, merging."""

import struct

import numpy as np
import pytest

from megaclap.data.indexed_dataset import (DTYPE_CODES, IndexedDataset, IndexedDatasetBuilder,
                                           IndexedDatasetError, best_dtype)
from tools.merge_datasets import merge


def _docs(rng, n, dtype, max_len=50):
    if np.dtype(dtype).kind == "f":
        return [rng.standard_normal(rng.integers(1, max_len)).astype(dtype) for _ in range(n)]
    hi = min(np.iinfo(dtype).max, 1000)
    return [rng.integers(0, hi, rng.integers(1, max_len)).astype(dtype) for _ in range(n)]


def _write(prefix, docs, dtype):
    b = IndexedDatasetBuilder(f"{prefix}.bin", dtype)
    for d in docs:
        b.add_document(d)
    b.finalize(f"{prefix}.idx")
    return b


def _reference_idx(dtype_code, lengths, itemsize, doc_indices):
    """The documented layout, written independently with struct."""
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_indices))
    out += b"".join(struct.pack("<i", n) for n in lengths)
    ptr = 0
    for n in lengths:
        out += struct.pack("<q", ptr)
        ptr += n * itemsize
    return out + b"".join(struct.pack("<q", d) for d in doc_indices)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_round_trip_every_dtype(tmp_path, code):
    dtype = DTYPE_CODES[code]
    docs = _docs(np.random.default_rng(code), 20, dtype)
    _write(tmp_path / "d", docs, dtype)
    for mmap in (True, False):
        ds = IndexedDataset(str(tmp_path / "d"), mmap=mmap)
        assert ds.dtype == np.dtype(dtype) and len(ds) == 20 and ds.num_documents == 20
        assert list(ds.document_indices) == list(range(21))
        for i, d in enumerate(docs):
            np.testing.assert_array_equal(ds[i], d)
            np.testing.assert_array_equal(ds.get(i, 1, len(d) - 1), d[1:])
        assert [len(x) for x in ds[2:5]] == [len(d) for d in docs[2:5]]


def test_idx_bytes_match_the_documented_layout(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [5, 1, 7, 3]
    b = IndexedDatasetBuilder(str(tmp_path / "d.bin"), np.uint16)
    b.add_item(rng.integers(0, 100, lengths[0]))
    b.add_item(rng.integers(0, 100, lengths[1]))
    b.end_document()                       # a two-sequence document (sentence split)
    b.add_document(rng.integers(0, 100, 10), lengths=[7, 3])
    b.finalize(str(tmp_path / "d.idx"))
    expected = _reference_idx(8, lengths, 2, [0, 2, 4])
    assert (tmp_path / "d.idx").read_bytes() == expected
    assert (tmp_path / "d.bin").stat().st_size == 2 * sum(lengths)
    ds = IndexedDataset(str(tmp_path / "d"))
    assert list(ds.sequence_lengths) == lengths and list(ds.document_indices) == [0, 2, 4]


def test_reads_a_file_written_from_the_layout(tmp_path):
    tokens = np.arange(12, dtype=np.int32)
    (tmp_path / "m.bin").write_bytes(tokens.tobytes())
    (tmp_path / "m.idx").write_bytes(_reference_idx(4, [4, 8], 4, [0, 1, 2]))
    ds = IndexedDataset(str(tmp_path / "m"))
    np.testing.assert_array_equal(ds[1], tokens[4:])


def _corrupt(tmp_path, edit):
    _write(tmp_path / "c", _docs(np.random.default_rng(1), 5, np.uint16), np.uint16)
    idx, bin_ = tmp_path / "c.idx", tmp_path / "c.bin"
    edit(idx, bin_)
    return str(tmp_path / "c")


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("edit, match", [
    (lambda i, b: _patch(i, 0, b"NOTMMIDX\x00"), "bad magic"),
    (lambda i, b: _patch(i, 9, struct.pack("<Q", 2)), "unsupported version"),
    (lambda i, b: _patch(i, 17, struct.pack("<B", 9)), "unknown dtype code"),
    (lambda i, b: i.write_bytes(i.read_bytes()[:-5]), "truncated .idx"),
    (lambda i, b: i.write_bytes(i.read_bytes()[:20]), "truncated .idx"),
    (lambda i, b: b.write_bytes(b.read_bytes()[:-2]), ".bin too short"),
])
def test_corrupt_files_are_refused_naming_the_check(tmp_path, edit, match):
    prefix = _corrupt(tmp_path, edit)
    with pytest.raises(IndexedDatasetError, match=match):
        IndexedDataset(prefix)


def test_empty_dataset_is_refused(tmp_path):
    b = _write(tmp_path / "e", [np.zeros(0, np.uint16)], np.uint16)
    assert b.skipped_empty == 1
    with pytest.raises(IndexedDatasetError, match="empty dataset"):
        IndexedDataset(str(tmp_path / "e"))


def test_missing_files_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-path"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_zero_length_documents_are_skipped_and_counted(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "z.bin"), np.uint16)
    b.add_document([1, 2, 3])
    b.add_document([])
    b.end_document()                                  # nothing added since the last one
    b.add_documents(np.array([4, 5, 6]), [2, 0, 1])   # one empty among three
    b.finalize(str(tmp_path / "z.idx"))
    assert b.skipped_empty == 3
    ds = IndexedDataset(str(tmp_path / "z"))
    assert [x.tolist() for x in ds[0:3]] == [[1, 2, 3], [4, 5], [6]]
    assert list(ds.document_indices) == [0, 1, 2, 3]


def test_tokens_that_do_not_fit_the_dtype_are_refused(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "w.bin"), np.uint16)
    with pytest.raises(ValueError, match="best_dtype"):
        b.add_document(np.array([70000]))
    assert best_dtype(32000) == np.uint16 and best_dtype(65500) == np.int32
    assert best_dtype(None) == np.int32


def test_merge_concatenates_shards(tmp_path):
    rng = np.random.default_rng(3)
    shards = [_docs(rng, n, np.uint16) for n in (3, 4, 2)]
    (tmp_path / "shards").mkdir()
    for k, docs in enumerate(shards):
        _write(tmp_path / "shards" / f"s{k}", docs, np.uint16)
    merge([str(tmp_path / "shards")], str(tmp_path / "merged"))
    ds = IndexedDataset(str(tmp_path / "merged"))
    flat = [d for docs in shards for d in docs]
    assert len(ds) == ds.num_documents == len(flat)
    for i, d in enumerate(flat):
        np.testing.assert_array_equal(ds[i], d)
    _write(tmp_path / "other", _docs(rng, 2, np.int32), np.int32)
    with pytest.raises(IndexedDatasetError, match="dtype mismatch"):
        merge([str(tmp_path / "merged"), str(tmp_path / "other")], str(tmp_path / "bad"))
