"""AQ-SGD's per-sample reference store: sample id -> one row m_s of shape `row_shape`.

Rows live in memory on `device` (a tensor grown by doubling), or, when `path` is given, in an
np.memmap file `<path>/<name>.bin` grown the same way, so a store larger than RAM works (rows
are read and written per microbatch and moved to `device`). Memory is O(N s h) for N distinct
samples: this is the cost Clapping avoids.

Every endpoint (sender or receiver of one boundary and direction, on one pp/dp/tp rank) owns
its file (`store_path`), holds an exclusive lock on it while open, and is the only one that
ever truncates it. Changes since the last commit() can be rolled back (a skipped fp16 step);
a checkpoint holds the rows themselves (streamed from the memmap), so resume is exact.
"""

import fcntl
import os

import numpy as np
import torch


def store_path(store_dir, boundary: int, direction: str, pp_rank: int, dp_rank: int, tp_rank: int):
    """Directory of one endpoint's store under --aqsgd-store-dir (None: keep it in memory).

    The sender of boundary b forward (and receiver backward) is pp rank b; the other end is
    b + 1. Role and pp rank are both in the name, so the two ends never share a file."""
    if not store_dir:
        return None
    role = "send" if (direction == "fwd") == (pp_rank == boundary) else "recv"
    return os.path.join(store_dir, f"aqsgd_b{boundary}_{direction}_{role}_pp{pp_rank}_dp{dp_rank}_tp{tp_rank}")


class AqsgdStore:
    """Grow-only map from global sample id to a reference row.

    find(ids) -> rows (-1 = never seen; no mutation); insert(ids) -> rows of newly added ids;
    read(rows) -> [n, *row_shape] on `device`; write(rows, values); commit() / rollback().
    """

    def __init__(self, row_shape, dtype: torch.dtype, device, path=None, name: str = "aqsgd"):
        self.row_shape, self.dtype = tuple(row_shape), dtype
        self.device = torch.device(device)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.row_nbytes = int(np.prod(self.row_shape, dtype=np.int64)) * itemsize
        self.file = os.path.join(path, f"{name}.bin") if path is not None else None
        self._index: dict[int, int] = {}
        self._capacity = 0
        self._data = None  # torch tensor [capacity, *row_shape] or np.memmap [capacity, row_nbytes]
        self._fd = None    # the locked file descriptor of a disk store
        self._committed = 0  # ids present at the last commit (rows [0, _committed))
        self._undo: dict[int, torch.Tensor] = {}  # committed row -> its value at the last commit
        self.undo = True  # P2P turns it off when no step can be rolled back (no fp16)
        if self.file is not None:
            os.makedirs(path, exist_ok=True)

    @property
    def num_samples(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use (num_samples * row bytes); allocation is at most 2x this."""
        return self.num_samples * self.row_nbytes

    def find(self, sample_ids) -> torch.Tensor:
        """Row of each id, -1 where the id has never been inserted. LongTensor [n] on CPU."""
        return torch.tensor([self._index.get(int(i), -1) for i in _ids(sample_ids)], dtype=torch.long)

    def insert(self, sample_ids) -> torch.Tensor:
        """Assign rows to ids not yet present (in order) and return all their rows."""
        for i in _ids(sample_ids):
            self._index.setdefault(int(i), len(self._index))
        self._reserve(len(self._index))
        return self.find(sample_ids)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows [n, *row_shape] on `device` (a copy)."""
        if self.file is None:
            return self._data[rows.to(self.device)]
        raw = torch.from_numpy(np.ascontiguousarray(self._data[rows.numpy()]))  # [n, row_nbytes]
        return raw.view(self.dtype).reshape(-1, *self.row_shape).to(self.device)

    def write(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """values: [n, *row_shape] in `dtype`."""
        self._remember(rows)
        self._write(rows, values)

    def _write(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self.file is None:
            self._data[rows.to(self.device)] = values
            return
        raw = values.detach().to("cpu").contiguous().view(torch.uint8).reshape(len(rows), self.row_nbytes)
        self._data[rows.numpy()] = raw.numpy()

    # --- step commit / rollback ----------------------------------------------------------
    def _remember(self, rows: torch.Tensor) -> None:
        """Keep the committed value of each committed row before its first change this step."""
        if not self.undo:
            return
        keep = [r for r in rows.tolist() if r < self._committed and r not in self._undo]
        if keep:
            for r, v in zip(keep, self.read(torch.tensor(keep, dtype=torch.long))):
                self._undo[r] = v

    def commit(self) -> None:
        """The step's inserts and writes stand."""
        self._committed, self._undo = len(self._index), {}

    def rollback(self) -> None:
        """Undo every insert and write since the last commit() (rows inserted since are
        dropped from the index; their slots are reused by the next inserts)."""
        if self._undo:
            rows = sorted(self._undo)
            self._write(torch.tensor(rows, dtype=torch.long), torch.stack([self._undo[r] for r in rows]))
        while len(self._index) > self._committed:
            self._index.popitem()  # ids were added in row order: the newest row goes first
        self._undo = {}

    # --- allocation -----------------------------------------------------------------------
    def _reserve(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity, 16)
        if self.file is None:
            data = torch.zeros(capacity, *self.row_shape, dtype=self.dtype, device=self.device)
            if self._data is not None:
                data[: self._capacity] = self._data
            self._data = data
        else:
            if self._data is not None:
                self._data.flush()
            else:
                self._open_locked(truncate=True)  # this endpoint's own file: stale rows go
            os.ftruncate(self._fd, capacity * self.row_nbytes)
            self._data = np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(capacity, self.row_nbytes))
        self._capacity = capacity

    def _open_locked(self, truncate: bool) -> None:
        """Open and lock this endpoint's file; another live endpoint holding it is an error."""
        if self._fd is None:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ValueError(f"--aqsgd-store-dir: {self.file} is in use by another AQ-SGD store; "
                                 "give each run its own --aqsgd-store-dir") from None
            self._fd = fd
        if truncate:
            os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Flush and release the file (a disk store); the store is unusable afterwards."""
        if self._data is not None and self.file is not None:
            self._data.flush()
        self._data = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # --- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Index (ids in row order) and the rows themselves. For a disk store the rows are a
        zero-copy view of the memmap, streamed into the checkpoint by torch.save: serialize the
        result before the next step, which would change the view (the saved file cannot)."""
        ids = torch.tensor(sorted(self._index, key=self._index.get), dtype=torch.long)
        n = self.num_samples
        if not n:
            rows = None
        elif self.file is None:
            rows = self._data[:n].clone()
        else:
            self._data.flush()
            rows = torch.from_numpy(self._data[:n]).view(self.dtype).reshape(n, *self.row_shape)
        return {"ids": ids, "row_shape": self.row_shape, "rows": rows}

    def load_state_dict(self, sd: dict) -> None:
        if tuple(sd["row_shape"]) != self.row_shape:
            raise ValueError(f"AQ-SGD store row shape {tuple(sd['row_shape'])} != {self.row_shape}")
        ids = sd["ids"].tolist()
        if ids and sd.get("rows") is None:
            raise ValueError("this checkpoint's AQ-SGD store has ids but no rows (saved before disk stores "
                             "were written into checkpoints): it cannot be resumed exactly; start afresh")
        self._index = {int(i): r for r, i in enumerate(ids)}
        if self.file is not None and self._data is not None:
            self._data.flush()
        self._data, self._capacity = None, 0
        self._reserve(len(ids))
        if ids:
            self._write(torch.arange(len(ids)), sd["rows"].to(self.device, self.dtype))
        self.commit()


def _ids(sample_ids) -> list:
    return sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
