"""Trajectory sampler (dino_tracker.md §4.1): one batch of (source, target) point pairs per iteration.

Procedure: pick ``n_frames`` distinct frames; keep trajectories valid at >= 2 of them; draw up to B
without replacement; for each pick two distinct valid frames among those (source, target).

Trajectories come as a sparse :class:`~tracker.preprocess.trajectory_store.TrajectoryStore` (or a dense (N, T, 2)
NaN array, converted): validity at the drawn frames is an interval test on (start, length), so a draw
costs O(N * n_frames) whatever the clip length, and no (N, T) mask is ever built.

``separate_frames=True`` is the reference: the FG and the BG halves each draw their own ``n_frames``
frames, so an iteration sees up to 2 * n_frames distinct frames (7-8 in practice with 4). With
``separate_frames=False`` (our CPU default, a difference from the reference) both halves share one
draw, so the frame set (and the DeltaDINO work per iteration) is at most ``n_frames`` frames.

``frame_stride`` k > 1: training draws only frames 0, k, 2k, ... (the trajectories, chained on every
frame, still connect them; tracking then runs on every frame). Not in the reference, whose maintainers
suggest dropping frames from the video instead (which also drops them from the tracks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..preprocess.trajectory_store import as_store


@dataclass
class Batch:
    frames: np.ndarray   # (T',) sorted video frame indices of the frame set
    src_fi: np.ndarray   # (B,) index into ``frames``
    tgt_fi: np.ndarray
    src_xy: np.ndarray   # (B, 2) float32 input px
    tgt_xy: np.ndarray
    traj: np.ndarray | None = None  # (B,) trajectory index in the store (for tests and diagnostics)
    is_fg: np.ndarray | None = None  # (B,) bool


class TrajectorySampler:
    def __init__(self, trajectories, fg: np.ndarray | None, batch_size: int, fg_ratio: float = 0.5,
                 n_frames: int = 4, separate_frames: bool = False, frame_stride: int = 1):
        store = as_store(trajectories)
        n_all = len(store)
        fg = np.zeros(n_all, bool) if fg is None else np.asarray(fg, bool)
        if len(fg) != n_all:
            raise ValueError(f"{len(fg)} foreground flags for {n_all} trajectories")
        keep = store.lengths >= 2  # trajectories with <= 1 valid frame are useless
        self.ids = np.flatnonzero(keep)  # store indices of the usable trajectories
        self.store = store
        self.starts = store.starts[keep].astype(np.int64)
        self.ends = self.starts + store.lengths[keep]
        self.fg = fg[keep]
        if len(self.ids) < 2:
            raise ValueError("need at least 2 trajectories with >= 2 valid frames to train")
        self.T = store.num_frames
        self.batch_size = int(batch_size)
        self.fg_ratio = float(fg_ratio)
        if int(frame_stride) < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_pool = np.arange(0, self.T, int(frame_stride))  # frames training may draw
        self.n_frames = min(int(n_frames), len(self.frame_pool))
        self.separate_frames = bool(separate_frames)
        self.fg_idx = np.flatnonzero(self.fg)
        self.bg_idx = np.flatnonzero(~self.fg)

    def valid(self, pool: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """(len(pool), len(frames)) bool: usable trajectory ``pool[i]`` is valid at ``frames[j]``."""
        f = np.asarray(frames, np.int64)[None, :]
        return (self.starts[pool][:, None] <= f) & (f < self.ends[pool][:, None])

    def _draw(self, rng: np.random.Generator, pool: np.ndarray, frames: np.ndarray, n: int):
        if n <= 0 or len(pool) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
        v = self.valid(pool, frames)
        ok = v.sum(axis=1) >= 2
        cand = pool[ok]
        if len(cand) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
        pick = rng.choice(len(cand), size=min(n, len(cand)), replace=False)
        sel = cand[pick]
        vv = v[ok][pick]
        keys = rng.random(vv.shape)
        keys[~vv] = np.inf  # two random valid frames: smallest two random keys among valid ones
        order = np.argsort(keys, axis=1, kind="stable")[:, :2]
        return sel, order

    def _frames(self, rng: np.random.Generator) -> np.ndarray:
        if len(self.frame_pool) == self.T:  # (the same random stream as before the stride option)
            return np.sort(rng.choice(self.T, size=self.n_frames, replace=False))
        return np.sort(self.frame_pool[rng.choice(len(self.frame_pool), size=self.n_frames, replace=False)])

    def sample(self, rng: np.random.Generator, max_tries: int = 20) -> Batch:
        n_fg = int(round(self.batch_size * self.fg_ratio))
        if len(self.fg_idx) == 0:
            n_fg = 0
        elif len(self.bg_idx) == 0:
            n_fg = self.batch_size
        for _ in range(max_tries):
            frames_fg = self._frames(rng)
            frames_bg = self._frames(rng) if self.separate_frames else frames_fg
            s1, o1 = self._draw(rng, self.fg_idx, frames_fg, n_fg)
            s2, o2 = self._draw(rng, self.bg_idx, frames_bg, self.batch_size - n_fg)
            sel = np.concatenate([s1, s2])
            if len(sel) >= 2:
                break
        else:
            raise RuntimeError("trajectory sampler: no frame draw with >= 2 usable trajectories")
        t_src = np.concatenate([frames_fg[o1[:, 0]], frames_bg[o2[:, 0]]])
        t_tgt = np.concatenate([frames_fg[o1[:, 1]], frames_bg[o2[:, 1]]])
        used = np.unique(np.concatenate([t_src, t_tgt]))
        src_fi = np.searchsorted(used, t_src).astype(np.int64)
        tgt_fi = np.searchsorted(used, t_tgt).astype(np.int64)
        ids = self.ids[sel]
        src_xy = self.store.xy(ids, t_src)
        tgt_xy = self.store.xy(ids, t_tgt)
        is_fg = np.concatenate([np.ones(len(s1), bool), np.zeros(len(s2), bool)])
        return Batch(used, src_fi, tgt_fi, src_xy.astype(np.float32), tgt_xy.astype(np.float32), ids, is_fg)
