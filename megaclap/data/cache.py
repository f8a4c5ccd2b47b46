"""On-disk cache of dataset index arrays, keyed by a hash of everything they depend on.

A cache entry under `data_cache_path` is a set of `.npy` files plus a description JSON
(written last, so it marks the entry complete) holding the full key, and each array's
shape, dtype and blake2b checksum. An entry is used only when the key matches exactly and
every file checks out; anything else (stale inputs, truncation, garbage) is rebuilt and
rewritten. Every file is written to a unique temporary name and `os.replace`d, so ranks
that build the same entry at once cannot corrupt it, and a crash leaves no half file.
Arrays are loaded with mmap, so a cached index costs no RSS until pages are touched.
"""

import hashlib
import json
import os
import uuid

import numpy as np

CACHE_FORMAT = 1


def key_hash(key):
    """Short stable hash of a JSON-able key."""
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def file_fingerprint(path):
    """(size, mtime_ns) of a file: part of a cache key, so a changed input invalidates it."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _checksum(path):
    """blake2b of a file read in chunks (plain reads: no memmap pages in RSS)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path, write_fn):
    """Write through `write_fn(tmp_path)` then rename over `path`."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class IndexCache:
    """Load-or-build for named numpy arrays; `cache_dir=None` builds in memory only."""

    def __init__(self, cache_dir):
        self.cache_dir = cache_dir
        self.last_hit = False

    def _paths(self, kind, digest, names):
        base = os.path.join(self.cache_dir, f"{kind}-{digest}")
        return base + "-description.json", {n: f"{base}-{n}.npy" for n in names}

    def load_or_build(self, kind, key, names, build_fn):
        """Arrays for `key`: from the cache when a valid entry exists, else `build_fn()`
        (a dict name -> array) whose result is then cached."""
        self.last_hit = False
        if self.cache_dir is None:
            return build_fn()
        full_key = {"kind": kind, "format": CACHE_FORMAT, **key}
        desc_path, paths = self._paths(kind, key_hash(full_key), names)
        arrays = self._load(desc_path, paths, full_key)
        if arrays is not None:
            self.last_hit = True
            return arrays
        arrays = build_fn()
        self._store(desc_path, paths, full_key, arrays)
        return arrays

    def _load(self, desc_path, paths, full_key):
        """The cached arrays, or None if the entry is missing, stale or corrupt."""
        try:
            with open(desc_path) as f:
                desc = json.load(f)
            if desc.get("key") != json.loads(json.dumps(full_key, default=str)):
                return None
            out = {}
            for name, path in paths.items():
                meta = desc["arrays"][name]
                if _checksum(path) != meta["checksum"]:
                    return None
                arr = np.load(path, mmap_mode="r")
                if list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
                    return None
                out[name] = arr
            return out
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None

    def _store(self, desc_path, paths, full_key, arrays):
        """Write every array, then the description that marks the entry complete."""
        os.makedirs(self.cache_dir, exist_ok=True)
        meta = {}
        for name, path in paths.items():
            arr = np.ascontiguousarray(arrays[name])
            _atomic_write(path, lambda tmp, a=arr: _save_npy(tmp, a))
            meta[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                          "checksum": _checksum(path)}
        desc = {"key": full_key, "arrays": meta}
        _atomic_write(desc_path, lambda tmp: _write_text(tmp, json.dumps(desc, default=str)))


def _save_npy(path, arr):
    with open(path, "wb") as f:
        np.save(f, arr)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)
