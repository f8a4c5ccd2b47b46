"""GPT samples: boundaries vs. concatenated tokens, Megatron's sample index, split, blend,
on-disk cache (hit, corrupt, stale) and the mock corpus."""

import os

import numpy as np
import pytest

from megaclap.data.blended import BlendedDataset, build_blending_index
from megaclap.data.gpt_dataset import (GPTDataset, MockGPTDataset, build_sample_index,
                                       build_split_dataset, parse_split, split_document_ranges)
from megaclap.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def write_corpus(prefix, num_docs, seed=0, max_len=40, vocab=500):
    """Documents of random lengths (1..max_len, a few empty ones skipped)."""
    rng = np.random.default_rng(seed)
    b = IndexedDatasetBuilder(f"{prefix}.bin", np.uint16)
    docs = []
    for _ in range(num_docs):
        d = rng.integers(0, vocab, rng.integers(1, max_len)).astype(np.uint16)
        b.add_document(d)
        docs.append(d)
    b.finalize(f"{prefix}.idx")
    return str(prefix), docs


def megatron_sample_index(sizes, doc_idx, seq_length, num_samples):
    """Line-by-line port of Megatron's helpers.cpp build_sample_idx (add_extra_token)."""
    out, doc_idx_index, doc_offset = [(0, 0)], 0, 0
    for _ in range(num_samples):
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = sizes[doc_idx[doc_idx_index]] - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        out.append((doc_idx_index, doc_offset))
    return np.array(out)


def test_sample_index_matches_megatron():
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 30, 300).astype(np.int32)   # zero-length sequences included
    doc_idx = rng.permutation(300).astype(np.int32)
    for seq in (1, 7, 16, 64):
        ours = build_sample_index(sizes, doc_idx, seq)
        ref = megatron_sample_index(sizes, doc_idx, seq, len(ours) - 1)
        assert len(ours) - 1 == (int(sizes.sum()) - 1) // seq
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("shuffle", [True, False])
def test_samples_cross_documents_like_the_concatenation(tmp_path, shuffle):
    prefix, docs = write_corpus(tmp_path / "c", 200)
    seq = 16
    ds = GPTDataset(prefix, (0, 200), seq, seed=5, shuffle=shuffle)
    order = np.asarray(ds.document_index)
    assert sorted(order.tolist()) == list(range(200)) and (order.tolist() != list(range(200))) == shuffle
    concat = np.concatenate([docs[i] for i in order]).astype(np.int64)
    assert len(ds) == (len(concat) - 1) // seq
    ids = np.arange(len(ds))
    batch = ds.get_batch(ids[::-1])
    for row, i in enumerate(ids[::-1]):
        np.testing.assert_array_equal(batch[row], concat[i * seq:i * seq + seq + 1])
    np.testing.assert_array_equal(ds[3], concat[48:65])


def test_multi_sequence_documents_stay_together(tmp_path):
    b = IndexedDatasetBuilder(str(tmp_path / "m.bin"), np.uint16)
    for d in range(30):
        b.add_document(np.full(6, d), lengths=[2, 4])
    b.finalize(str(tmp_path / "m.idx"))
    ds = GPTDataset(str(tmp_path / "m"), (0, 30), 5, seed=1)
    seqs = np.asarray(ds.document_index).reshape(-1, 2)
    assert np.all(seqs[:, 1] == seqs[:, 0] + 1)        # a document's sequences in order
    flat = ds.get_batch(np.arange(len(ds)))[:, :-1].reshape(-1)
    expected = np.repeat(seqs[:, 0] // 2, 6)                # document d is 6 tokens of value d
    np.testing.assert_array_equal(flat, expected[:len(flat)])


def test_split_by_document_matches_megatron():
    assert split_document_ranges(1000, "949,50,1") == [(0, 949), (949, 999), (999, 1000)]
    assert split_document_ranges(10, "98,2,0") == [(0, 10), (10, 10), (10, 10)]
    ranges = split_document_ranges(997, "6/3/1")
    assert ranges[0][0] == 0 and ranges[-1][1] == 997
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert parse_split("1") == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="--split"):
        parse_split("a,b")


def test_split_datasets_use_disjoint_documents(tmp_path):
    prefix, _ = write_corpus(tmp_path / "c", 1000)
    parts = [build_split_dataset(prefix, "80,15,5", k, 8, seed=0) for k in range(3)]
    docs = [set(np.asarray(p.document_index).tolist()) for p in parts]
    assert [len(d) for d in docs] == [800, 150, 50]
    assert not (docs[0] & docs[1]) and not (docs[1] & docs[2]) and not (docs[0] & docs[2])
    assert build_split_dataset(prefix, "100,0,0", 1, 8, seed=0) is None


def test_blend_proportions_and_coverage(tmp_path):
    a = GPTDataset(write_corpus(tmp_path / "a", 300, seed=1)[0], (0, 300), 8, seed=0)
    b = GPTDataset(write_corpus(tmp_path / "b", 100, seed=2)[0], (0, 100), 8, seed=0)
    size = 2000
    blend = BlendedDataset([a, b], [0.7, 0.3], size)
    owner = np.asarray(blend.dataset_index)
    for d, w in ((0, 0.7), (1, 0.3)):
        assert abs((owner == d).sum() - w * size) <= 1
        assert np.all(np.abs(np.cumsum(owner == d) - w * np.arange(1, size + 1)) <= 1.5)
    np.testing.assert_array_equal(blend[5], [a, b][owner[5]][int(blend.dataset_sample_index[5])])
    # unweighted (weights = sizes): every sample exactly once
    even = BlendedDataset([a, b], [len(a), len(b)], len(a) + len(b))
    pairs = set(zip(np.asarray(even.dataset_index).tolist(),
                    np.asarray(even.dataset_sample_index).tolist()))
    assert len(pairs) == len(a) + len(b)
    # no wrap (online): cut where the first dataset runs out, nothing repeats
    cut = BlendedDataset([a, b], [0.5, 0.5], 10**6, wrap=False)
    local = np.asarray(cut.dataset_sample_index)
    assert len(cut) <= 2 * min(len(a), len(b)) + 1
    for d, ds in enumerate((a, b)):
        assert np.all(local[np.asarray(cut.dataset_index) == d] < len(ds))


def test_blending_index_is_fast_and_exact():
    owner, count = build_blending_index([0.5, 0.25, 0.25], 8)
    assert owner.tolist() == [0, 1, 2, 0, 0, 1, 2, 0] and count.tolist() == [0, 0, 0, 1, 2, 1, 1, 3]


def test_cache_hit_then_corrupt_and_stale_entries_are_rebuilt(tmp_path):
    prefix, _ = write_corpus(tmp_path / "c", 100)
    cache = str(tmp_path / "cache")
    first = GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache)
    assert not first.cache_hit
    again = GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache)
    assert again.cache_hit
    np.testing.assert_array_equal(again.sample_index, first.sample_index)
    files = sorted(os.listdir(cache))
    assert len(files) == 3 and not any(".tmp" in f for f in files)
    npy = [os.path.join(cache, f) for f in files if f.endswith("sample_index.npy")][0]
    for damage in (lambda b: b[:-8], lambda b: b[:100] + b"\xff" * (len(b) - 100), lambda b: b""):
        with open(npy, "rb") as f:
            raw = f.read()
        with open(npy, "wb") as f:
            f.write(damage(raw))
        rebuilt = GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache)
        assert not rebuilt.cache_hit
        np.testing.assert_array_equal(rebuilt.sample_index, first.sample_index)
    desc = [os.path.join(cache, f) for f in files if f.endswith(".json")][0]
    with open(desc, "w") as f:
        f.write("{not json")
    assert not GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache).cache_hit
    assert GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache).cache_hit
    # stale: the corpus is rewritten (different contents, size and mtime)
    write_corpus(tmp_path / "c", 120, seed=9)
    stale = GPTDataset(prefix, (0, 100), 8, seed=0, cache_dir=cache)
    assert not stale.cache_hit and len(stale) != len(first)
    assert not GPTDataset(prefix, (0, 100), 9, seed=0, cache_dir=cache).cache_hit
    assert not GPTDataset(prefix, (0, 100), 8, seed=1, cache_dir=cache).cache_hit


def test_index_build_on_a_large_corpus_counts_every_sample(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 2000, 200_000).astype(np.int32)   # ~2e8 tokens
    doc_idx = rng.permutation(len(lengths)).astype(np.int32)
    index = build_sample_index(lengths, doc_idx, 1024)
    assert len(index) - 1 == (int(lengths.sum()) - 1) // 1024
    ends = np.concatenate([[0], np.cumsum(lengths[doc_idx], dtype=np.int64)])  # sample i starts at token 1024 i
    assert np.array_equal(ends[index[:, 0]] + index[:, 1], 1024 * np.arange(len(index)))


def test_too_short_split_names_the_flags(tmp_path):
    prefix, _ = write_corpus(tmp_path / "c", 2, max_len=3)
    with pytest.raises(ValueError, match="--seq-length"):
        GPTDataset(prefix, (0, 2), 64, seed=0)


def test_mock_dataset_is_deterministic_and_sparse():
    ds = MockGPTDataset(1000, 32, 200, seed=3)
    batch = ds.get_batch(np.array([7, 3, 7]))
    assert batch.shape == (3, 33) and batch.dtype == np.int64
    np.testing.assert_array_equal(batch[0], batch[2])
    np.testing.assert_array_equal(batch[1], MockGPTDataset(1000, 32, 200, seed=3)[3])
    assert not np.array_equal(batch[0], batch[1])
    assert batch.min() >= 0 and batch.max() < 200
    many = ds.get_batch(np.arange(200))
    pairs = set(zip(many[:, :-1].ravel().tolist(), many[:, 1:].ravel().tolist()))
    succ = {}
    for a, b in pairs:
        succ.setdefault(a, set()).add(b)
    assert max(len(s) for s in succ.values()) <= 4
    shifted = MockGPTDataset(1000, 32, 200, seed=3, id_offset=5)
    np.testing.assert_array_equal(shifted[2], ds[7])


def test_reader_uses_no_memmap_for_tokens(tmp_path):
    prefix, docs = write_corpus(tmp_path / "c", 20)
    ds = GPTDataset(prefix, (0, 20), 4, seed=0)
    assert isinstance(ds.indexed, IndexedDataset) and ds.indexed._bin is None
