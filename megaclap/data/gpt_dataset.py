"""Fixed-length GPT samples over a `.bin/.idx` corpus, and a mock corpus.

A sample is seq_length + 1 tokens (inputs and shifted labels) cut from the concatenation
of a split's documents, so samples cross document boundaries; consecutive samples share
one token (the last label of sample i is the first input of sample i+1), as in Megatron.

Index arrays, Megatron's names (built with numpy only, no compiled helpers):

    document_index [L] int32/int64   sequence ids of the split in reading order (documents
                                     shuffled once with the seed, or kept in file order)
    sample_index   [N+1, 2]          (position in document_index, token offset) where
                                     sample i starts; sample i ends at row i+1, inclusive

Sample i covers tokens [i*seq_length, i*seq_length + seq_length] of the concatenation, so
sample_index is one `searchsorted` of those positions in the cumulative lengths: an index
over 1e9 tokens builds in about a second. N = (tokens - 1) // seq_length. Unlike Megatron
the dataset holds one pass over its split; epochs and shuffling of samples are the
sampler's job (samplers.py).
"""

import os

import numpy as np

from megaclap.config.data import parse_split
from megaclap.errors import UserValueError

from .cache import IndexCache, file_fingerprint
from .indexed_dataset import IndexedDataset, bin_path, idx_path, read_index_header

SPLIT_NAMES = ("train", "valid", "test")


def split_document_ranges(num_documents, split):
    """Megatron's split by document: [(begin, end)] * 3 document ranges, covering all."""
    bounds = [0]
    for w in parse_split(split):
        bounds.append(bounds[-1] + int(round(w * num_documents)))
    diff = bounds[-1] - num_documents
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def build_document_index(doc_starts, doc_lo, doc_hi, seed, shuffle):
    """Sequence ids of documents [doc_lo, doc_hi), documents in seeded random order.

    doc_starts [D] int64: Megatron's document_indices. Returns [L] sequence ids.
    """
    docs = np.arange(doc_lo, doc_hi, dtype=np.int64)
    if shuffle:
        docs = np.random.default_rng([seed, 0x5EED_D0C]).permutation(docs)
    first, count = doc_starts[docs], doc_starts[docs + 1] - doc_starts[docs]
    if np.all(count == 1):  # one sequence per document (the GPT case)
        seq = first
    else:  # expand each document to its sequences, keeping their order
        csum = np.cumsum(count)
        seq = np.arange(csum[-1] if len(csum) else 0, dtype=np.int64)
        seq += np.repeat(first - (csum - count), count)
    dtype = np.int32 if len(doc_starts) < 2**31 else np.int64
    return seq.astype(dtype)


def build_sample_index(seq_lengths, document_index, seq_length):
    """Megatron's sample_idx, vectorised: rows (position in document_index, offset).

    seq_lengths [S] int32, document_index [L] -> [N+1, 2] with N = (tokens - 1) // seq_length.
    """
    lengths = seq_lengths[document_index].astype(np.int64)   # [L]
    ends = np.cumsum(lengths)                                # [L] exclusive end of each
    total = int(ends[-1]) if len(ends) else 0
    num_samples = max(total - 1, 0) // seq_length
    if num_samples == 0:
        return np.zeros((1, 2), np.int32)
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length  # [N+1]
    pos = np.searchsorted(ends, starts, side="right")        # containing doc (skips empties)
    offset = starts - (ends[pos] - lengths[pos])
    fits32 = len(document_index) < 2**31 and (len(lengths) == 0 or lengths.max() < 2**31)
    out = np.empty((num_samples + 1, 2), np.int32 if fits32 else np.int64)
    out[:, 0], out[:, 1] = pos, offset
    return out


class GPTDataset:
    """One split of one `.bin/.idx` prefix as N samples of seq_length + 1 tokens.

    Args:
        prefix: dataset prefix (without .bin/.idx).
        doc_range: (begin, end) documents of this split (see split_document_ranges).
        seq_length: model sequence length; samples have seq_length + 1 tokens.
        seed: shuffles the document order (shuffle=True; online reading keeps file order).
        cache_dir: where index arrays are cached (None: build in memory every time).
    """

    def __init__(self, prefix, doc_range, seq_length, seed, shuffle=True, cache_dir=None,
                 split_name="train"):
        self.prefix, self.doc_range, self.seq_length = prefix, tuple(doc_range), seq_length
        self.split_name = split_name
        self.indexed = IndexedDataset(prefix, mmap=False)
        self.cache_key = {
            "prefix": os.path.abspath(prefix), "idx": file_fingerprint(idx_path(prefix)),
            "bin": file_fingerprint(bin_path(prefix)), "doc_range": list(self.doc_range),
            "seq_length": seq_length, "seed": seed, "shuffle": shuffle,
        }
        cache = IndexCache(cache_dir)
        arrays = cache.load_or_build("GPTDataset", self.cache_key,
                                     ("document_index", "sample_index"),
                                     lambda: self._build(seed, shuffle))
        self.cache_hit = cache.last_hit
        self.document_index = arrays["document_index"]   # [L]
        self.sample_index = arrays["sample_index"]       # [N+1, 2]
        if len(self) == 0:
            raise UserValueError(f"{prefix}: the {split_name} split (documents {doc_range}) has fewer "
                             f"than seq_length + 1 = {seq_length + 1} tokens; lower --seq-length "
                             "or change --split")

    def _build(self, seed, shuffle):
        lo, hi = self.doc_range
        doc_index = build_document_index(np.asarray(self.indexed.document_indices), lo, hi,
                                         seed, shuffle)
        sample_index = build_sample_index(self.indexed.sequence_lengths, doc_index,
                                          self.seq_length)
        return {"document_index": doc_index, "sample_index": sample_index}

    def __len__(self):
        return len(self.sample_index) - 1

    def __getitem__(self, i):
        """Sample i as int64 [seq_length + 1]."""
        return self.get_batch(np.array([i]))[0]

    def get_batch(self, ids):
        """Samples `ids` [n] -> int64 [n, seq_length + 1], read with pread."""
        ids = np.asarray(ids, np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample ids must be in [0, {len(self)})")
        out = np.empty((len(ids), self.seq_length + 1), self.indexed.dtype)  # [n, s+1]
        bounds = np.asarray(self.sample_index[np.concatenate([ids, ids + 1])], np.int64)
        lengths = self.indexed.sequence_lengths
        for row in range(len(ids)):
            (d0, o0), (d1, o1) = bounds[row], bounds[len(ids) + row]
            filled = 0
            for d in range(d0, d1 + 1):
                seq = int(self.document_index[d])
                start = o0 if d == d0 else 0
                stop = o1 + 1 if d == d1 else int(lengths[seq])
                if stop > start:
                    self.indexed.read_into(out[row, filled:filled + stop - start], seq, start)
                    filled += stop - start
        return out.astype(np.int64)


class MockGPTDataset:
    """Synthetic corpus with no I/O: sample i is a walk on a fixed sparse Markov chain.

    Each token has 4 successors (probabilities 0.5, 0.25, 0.15, 0.1) drawn once from a
    Zipf-like law over the vocabulary, so unigram and bigram statistics are both strongly
    skewed and a tiny model's loss falls quickly from ln(V). Sample i is a pure function of
    (seed, id_offset + i): every rank, run and resume sees the same tokens.
    """

    SUCCESSOR_PROBS = np.array([0.5, 0.25, 0.15, 0.1])

    def __init__(self, num_samples, seq_length, vocab_size, seed=1234, id_offset=0):
        if vocab_size is None or vocab_size < 2:
            raise ValueError("mock data needs the tokenizer's --vocab-size (>= 2)")
        self.num_samples, self.seq_length = num_samples, seq_length
        self.vocab_size, self.seed, self.id_offset = vocab_size, seed, id_offset
        rng = np.random.default_rng([seed, 0x30C4])
        popularity = 1.0 / (np.arange(vocab_size) + 5.0)
        order = rng.permutation(vocab_size)
        probs = np.empty(vocab_size)
        probs[order] = popularity / popularity.sum()
        self.successors = rng.choice(vocab_size, size=(vocab_size, 4), p=probs)  # [V, 4]
        self._cum = np.cumsum(self.SUCCESSOR_PROBS)

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i):
        """Sample i as int64 [seq_length + 1]."""
        return self.get_batch(np.array([i]))[0]

    def get_batch(self, ids):
        """Samples `ids` [n] -> int64 [n, seq_length + 1], vectorised over the batch."""
        ids = np.asarray(ids, np.int64)
        s = self.seq_length
        first = np.empty(len(ids), np.int64)
        branch = np.empty((len(ids), s), np.int64)                   # [n, s]
        for row, i in enumerate(ids):
            rng = np.random.default_rng([self.seed, self.id_offset + int(i)])
            first[row] = rng.integers(self.vocab_size)
            branch[row] = np.searchsorted(self._cum, rng.random(s) * self._cum[-1], "right")
        out = np.empty((len(ids), s + 1), np.int64)                   # [n, s+1]
        out[:, 0] = first
        for t in range(s):
            out[:, t + 1] = self.successors[out[:, t], branch[:, t]]
        return out


def build_split_dataset(prefix, split, split_index, seq_length, seed, shuffle=True,
                        cache_dir=None):
    """GPTDataset for split `split_index` (0 train, 1 valid, 2 test) of `prefix`, or None
    when `--split` gives that split no documents."""
    _, _, doc_count = read_index_header(idx_path(prefix))
    lo, hi = split_document_ranges(max(doc_count - 1, 0), split)[split_index]
    if hi <= lo:
        return None
    return GPTDataset(prefix, (lo, hi), seq_length, seed, shuffle=shuffle, cache_dir=cache_dir,
                      split_name=SPLIT_NAMES[split_index])
