"""Per-frame access to large ``.npy`` cache files without holding them in memory.

``NpyArray(path)`` reads rows (frames) on demand with ``os.pread`` into fresh buffers: only the rows
asked for are in the process's memory, and the operating system's page cache (not counted in the
process's RSS, reclaimable) does the caching. A memory map would do the same I/O but keep every page
it touched mapped into the process, so reading a whole clip once would grow the RSS to the file size.

``NpyWriter`` streams rows into a ``.npy`` file (header first, rows appended): a stage writes its
output frame by frame and never holds the whole array.

Supports what the tracker does with its frames / features / flows: ``shape``, ``dtype``, ``len``,
integer, slice (step 1) and integer-array indexing (``numpy`` or ``torch`` indices); ``as_torch=True``
returns torch tensors and a torch ``dtype`` (the trainer and the inference index features that way).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class NpyArray:
    """Read-only, row-addressable view of a C-ordered ``.npy`` file."""

    def __init__(self, path, as_torch: bool = False):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self._offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{self.path}: only C-ordered, non-object arrays can be read lazily")
        if len(shape) < 1:
            raise ValueError(f"{self.path}: a 0-d array has no rows")
        self._shape = tuple(int(s) for s in shape)
        self._np_dtype = np.dtype(dtype)
        self._row = int(np.prod(self._shape[1:], dtype=np.int64)) * self._np_dtype.itemsize
        expected = self._offset + self._row * self._shape[0]
        if self.path.stat().st_size < expected:
            raise ValueError(f"{self.path}: file is shorter than its header says (truncated)")
        self.as_torch = bool(as_torch)
        self._fd: int | None = None

    # -- array-like metadata --------------------------------------------------------------------
    @property
    def shape(self):
        if self.as_torch:
            return torch.Size(self._shape)
        return self._shape

    @property
    def dtype(self):
        if self.as_torch:
            return torch.from_numpy(np.zeros(0, self._np_dtype)).dtype
        return self._np_dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def nbytes(self) -> int:
        return self._row * self._shape[0]

    def __len__(self) -> int:
        return self._shape[0]

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self._shape[dim]

    # -- reading --------------------------------------------------------------------------------
    def _read(self, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        out = np.empty((n,) + self._shape[1:], self._np_dtype)
        if n:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            buf = memoryview(out.reshape(-1).view(np.uint8))
            pos, done = self._offset + start * self._row, 0
            while done < len(buf):
                k = os.preadv(self._fd, [buf[done:]], pos + done)
                if k <= 0:
                    raise OSError(f"{self.path}: short read")
                done += k
        return out

    def rows(self, idx) -> np.ndarray:
        """Rows ``idx`` (any int sequence) as one numpy array; contiguous runs are read at once."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        n = self._shape[0]
        idx = np.where(idx < 0, idx + n, idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((len(idx),) + self._shape[1:], self._np_dtype)
        k = 0
        while k < len(idx):  # group consecutive runs
            j = k + 1
            while j < len(idx) and idx[j] == idx[j - 1] + 1:
                j += 1
            out[k:j] = self._read(int(idx[k]), int(idx[j - 1]) + 1)
            k = j
        return out

    def __getitem__(self, key):
        rest, key_dims = (), 1
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._shape[0] if int(key) < 0 else 0)
            if not 0 <= i < self._shape[0]:
                raise IndexError(f"row {key} out of range for {self._shape[0]} rows")
            arr = self._read(i, i + 1)[0]
        elif isinstance(key, slice):
            start, stop, step = key.indices(self._shape[0])
            arr = self._read(start, stop) if step == 1 else self.rows(range(start, stop, step))
        else:
            if hasattr(key, "detach"):  # torch tensor index
                key = key.detach().cpu().numpy()
            key = np.asarray(key)
            if key.dtype == bool:
                key = np.flatnonzero(key)
            arr = self.rows(key).reshape(key.shape + self._shape[1:])
            key_dims = key.ndim
        if rest:
            arr = arr[rest] if isinstance(key, (int, np.integer)) else arr[(slice(None),) * key_dims + rest]
        return self._wrap(arr)

    def _wrap(self, arr: np.ndarray):
        if self.as_torch:
            return torch.from_numpy(np.ascontiguousarray(arr))
        return arr

    def load(self):
        """The whole array in memory (small clips, tests)."""
        return self._wrap(self._read(0, self._shape[0]))

    def __array__(self, dtype=None, copy=None):
        arr = self._read(0, self._shape[0])
        return arr if dtype is None else arr.astype(dtype)

    def __iter__(self):
        for i in range(self._shape[0]):
            yield self[i]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):  # picklable (DataLoader workers, multiprocessing): reopen on demand
        st = dict(self.__dict__)
        st["_fd"] = None
        return st

    def __repr__(self) -> str:
        return f"NpyArray({str(self.path)!r}, shape={self._shape}, dtype={self._np_dtype})"


class NpyWriter:
    """Write a ``.npy`` of known shape row block by row block (``write``), then ``close`` (checks the count)."""

    def __init__(self, path, shape, dtype):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._f = open(self.path, "wb")
        np.lib.format.write_array_header_2_0(
            self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": self.shape})
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:]:
            block = block.reshape((-1,) + self.shape[1:])
        if self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: more rows than the declared {self.shape[0]}")
        self._f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: wrote {self.rows} of {self.shape[0]} rows")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *a):
        if exc_type is None:
            self.close()
        else:
            self._f.close()
