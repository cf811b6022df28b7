"""Sparse trajectory storage: each trajectory lives on one contiguous frame interval.

A trajectory ``i`` is valid on frames ``start[i] .. start[i] + length[i] - 1`` (validity is cumulative in
the chaining: once lost, always lost), so it is stored as its points only:

* ``starts`` (N,) int32, ``lengths`` (N,) int32,
* ``offsets`` (N+1,) int64 = cumulative lengths, ``points`` (P, 2) float32 with P = sum(lengths);
  trajectory i at frame f (valid) is ``points[offsets[i] + f - starts[i]]``.

Memory is 8 bytes per valid point + 16 per trajectory, instead of the dense (N, T, 2) NaN array's
8 * T bytes per trajectory (N itself grows with T, so the dense form grows like T^2: 1.23 M x 400
frames = 3.9 GB per array at 400 frames). ``dense()`` rebuilds the (N, T, 2) array for small clips and
tests. Not in the reference (which keeps the dense array, on the GPU).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TrajectoryStore:
    """Read-only sparse trajectories; see the module docstring."""

    def __init__(self, starts, lengths, points, num_frames: int):
        self.starts = np.asarray(starts, np.int32)
        self.lengths = np.asarray(lengths, np.int32)
        self.points = np.asarray(points, np.float32).reshape(-1, 2)
        self.num_frames = int(num_frames)
        self.offsets = np.zeros(len(self.starts) + 1, np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        if self.offsets[-1] != len(self.points):
            raise ValueError(f"trajectory lengths sum to {self.offsets[-1]}, got {len(self.points)} points")
        if len(self.starts) and (self.starts.min() < 0 or (self.starts + self.lengths).max() > num_frames
                                 or self.lengths.min() < 1):
            raise ValueError("trajectory intervals outside the clip")

    # -- basic info ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.starts)

    @property
    def ends(self) -> np.ndarray:
        """(N,) one past the last valid frame."""
        return self.starts + self.lengths

    @property
    def shape(self) -> tuple[int, int, int]:
        """The dense shape (N, T, 2) this store stands for."""
        return (len(self), self.num_frames, 2)

    @property
    def nbytes(self) -> int:
        return int(self.starts.nbytes + self.lengths.nbytes + self.offsets.nbytes + self.points.nbytes)

    # -- access --------------------------------------------------------------------------------
    def valid_at(self, ids: np.ndarray, frames) -> np.ndarray:
        """Bool validity of trajectories ``ids`` at ``frames`` (broadcast: (n,) x (n,) or (n,1) x (k,))."""
        ids = np.asarray(ids, np.int64)
        f = np.asarray(frames, np.int64)
        return (self.starts[ids] <= f) & (f < self.starts[ids] + self.lengths[ids])

    def xy(self, ids: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """(n, 2) positions of trajectory ``ids[k]`` at ``frames[k]`` (NaN where not valid)."""
        ids = np.asarray(ids, np.int64)
        f = np.asarray(frames, np.int64)
        ok = self.valid_at(ids, f)
        out = np.full((len(ids), 2), np.nan, np.float32)
        out[ok] = self.points[self.offsets[ids[ok]] + f[ok] - self.starts[ids[ok]]]
        return out

    def at_frame(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), xy (n, 2)) of every trajectory present at ``frame``, ids ascending."""
        ids = np.flatnonzero((self.starts <= frame) & (frame < self.starts + self.lengths))
        return ids, self.points[self.offsets[ids] + frame - self.starts[ids]]

    def first_points(self) -> np.ndarray:
        """(N, 2) each trajectory's first point (at its start frame)."""
        return self.points[self.offsets[:-1]]

    def subset(self, keep: np.ndarray) -> "TrajectoryStore":
        """A new store with the trajectories ``keep`` (bool mask or indices), in that order."""
        ids = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        lens = self.lengths[ids]
        if len(ids) == 0:
            return TrajectoryStore(np.zeros(0), np.zeros(0), np.zeros((0, 2)), self.num_frames)
        rows = np.repeat(self.offsets[ids] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        rows += np.arange(int(lens.sum()))
        return TrajectoryStore(self.starts[ids], lens, self.points[rows], self.num_frames)

    def dense(self, ids=None) -> np.ndarray:
        """(N, T, 2) float32, NaN where absent (or only the rows ``ids``). Memory N*T*8 bytes."""
        ids = np.arange(len(self)) if ids is None else np.asarray(ids, np.int64)
        out = np.full((len(ids), self.num_frames, 2), np.nan, np.float32)
        for row, i in enumerate(ids):
            a, b = self.offsets[i], self.offsets[i + 1]
            out[row, self.starts[i]:self.starts[i] + (b - a)] = self.points[a:b]
        return out

    # -- construction / files --------------------------------------------------------------------
    @classmethod
    def from_dense(cls, traj: np.ndarray) -> "TrajectoryStore":
        """From a dense (N, T, 2) NaN array whose rows are each valid on one contiguous interval."""
        traj = np.asarray(traj, np.float32)
        n, t = traj.shape[:2]
        valid = np.isfinite(traj).all(axis=-1)
        lengths = valid.sum(1)
        starts = np.where(lengths > 0, np.argmax(valid, axis=1), 0)
        ends = starts + lengths
        span = (np.arange(t)[None, :] >= starts[:, None]) & (np.arange(t)[None, :] < ends[:, None])
        if not np.array_equal(span, valid):
            raise ValueError("a trajectory is valid on more than one interval; the sparse store needs one")
        keep = lengths > 0  # row-major boolean indexing keeps each row's points together, in time order
        return cls(starts[keep], lengths[keep], traj[valid], t)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        np.save(folder / "starts.npy", self.starts, allow_pickle=False)
        np.save(folder / "lengths.npy", self.lengths, allow_pickle=False)
        np.save(folder / "points.npy", self.points, allow_pickle=False)
        np.save(folder / "num_frames.npy", np.asarray([self.num_frames], np.int64), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> "TrajectoryStore":
        folder = Path(folder)
        t = int(np.load(folder / "num_frames.npy")[0])
        return cls(np.load(folder / "starts.npy"), np.load(folder / "lengths.npy"), np.load(folder / "points.npy"), t)


def as_store(traj) -> TrajectoryStore:
    """A TrajectoryStore as is; a dense (N, T, 2) array converted."""
    return traj if isinstance(traj, TrajectoryStore) else TrajectoryStore.from_dense(traj)
