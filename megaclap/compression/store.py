"""AQ-SGD's per-sample reference store: sample id -> one row m_s of shape `row_shape`.

Rows live in memory on `device` (a tensor grown by doubling), or, when `path` is given, in an
np.memmap file `<path>/<name>.bin` grown the same way, so a store larger than RAM works (rows
are read and written per microbatch and moved to `device`). Memory is O(N s h) for N distinct
samples: this is the cost Clapping avoids.
"""

import os

import numpy as np
import torch


class AqsgdStore:
    """Grow-only map from global sample id to a reference row.

    find(ids) -> rows (-1 = never seen; no mutation); insert(ids) -> rows of newly added ids;
    read(rows) -> [n, *row_shape] on `device`; write(rows, values).
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
        if self.file is None:
            self._data[rows.to(self.device)] = values
            return
        raw = values.detach().to("cpu").contiguous().view(torch.uint8).reshape(len(rows), self.row_nbytes)
        self._data[rows.numpy()] = raw.numpy()

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
            # a new store starts a new file; a growing one extends its file in place
            with open(self.file, "wb" if self._data is None else "ab") as f:
                f.truncate(capacity * self.row_nbytes)
            self._data = np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(capacity, self.row_nbytes))
        self._capacity = capacity

    def state_dict(self) -> dict:
        """Index (ids in row order) plus the rows; a disk store flushes and records its file
        instead of copying rows into the checkpoint (keep the store dir with the checkpoint)."""
        ids = torch.tensor(sorted(self._index, key=self._index.get), dtype=torch.long)
        sd = {"ids": ids, "row_shape": self.row_shape, "file": self.file}
        if self.file is None:
            sd["rows"] = self._data[: self.num_samples].clone() if self.num_samples else None
        elif self._data is not None:
            self._data.flush()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        if tuple(sd["row_shape"]) != self.row_shape:
            raise ValueError(f"AQ-SGD store row shape {tuple(sd['row_shape'])} != {self.row_shape}")
        ids = sd["ids"].tolist()
        self._index = {int(i): r for r, i in enumerate(ids)}
        if self.file is None:
            self._data, self._capacity = None, 0
            self._reserve(len(ids))
            if ids:
                self._data[: len(ids)] = sd["rows"].to(self.device, self.dtype)
        else:
            if sd.get("file") and os.path.abspath(sd["file"]) != os.path.abspath(self.file):
                raise ValueError(f"AQ-SGD store was saved at {sd['file']}, this one is {self.file}")
            self._data, self._capacity = None, 0
            self._open_existing(len(ids))

    def _open_existing(self, needed: int) -> None:
        """Map the existing file (written before the checkpoint) with room for `needed` rows."""
        have = os.path.getsize(self.file) // self.row_nbytes if os.path.exists(self.file) else 0
        if have < needed:
            raise ValueError(f"AQ-SGD store file {self.file} holds {have} rows, checkpoint needs {needed}")
        if have:
            self._data = np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(have, self.row_nbytes))
        self._capacity = have


def _ids(sample_ids) -> list:
    return sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
