"""Trajectory sampler (dino_tracker.md §4.1): one batch of (source, target) point pairs per iteration.

Procedure: pick ``n_frames`` distinct frames; keep trajectories valid at >= 2 of them; draw up to B
without replacement; for each pick two distinct valid frames among those (source, target).

Difference from the reference: FG and BG halves share one frame draw, so the frame set (and the
DeltaDINO work per iteration) is at most ``n_frames`` frames, not up to twice that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    frames: np.ndarray   # (T',) sorted video frame indices of the frame set
    src_fi: np.ndarray   # (B,) index into ``frames``
    tgt_fi: np.ndarray
    src_xy: np.ndarray   # (B, 2) float32 input px
    tgt_xy: np.ndarray


class TrajectorySampler:
    def __init__(self, trajectories: np.ndarray, fg: np.ndarray | None, batch_size: int,
                 fg_ratio: float = 0.5, n_frames: int = 4):
        traj = np.asarray(trajectories, dtype=np.float32)
        valid = np.isfinite(traj).all(axis=-1)
        keep = valid.sum(axis=1) >= 2  # trajectories with <= 1 valid frame are useless
        self.traj = traj[keep]
        self.valid = valid[keep]
        fg = np.zeros(len(traj), bool) if fg is None else np.asarray(fg, bool)
        self.fg = fg[keep]
        if len(self.traj) < 2:
            raise ValueError("need at least 2 trajectories with >= 2 valid frames to train")
        self.T = traj.shape[1]
        self.batch_size = int(batch_size)
        self.fg_ratio = float(fg_ratio)
        self.n_frames = min(int(n_frames), self.T)
        self.fg_idx = np.flatnonzero(self.fg)
        self.bg_idx = np.flatnonzero(~self.fg)

    def _draw(self, rng: np.random.Generator, pool: np.ndarray, frames: np.ndarray, n: int):
        if n <= 0 or len(pool) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
        v = self.valid[pool][:, frames]
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

    def sample(self, rng: np.random.Generator, max_tries: int = 20) -> Batch:
        n_fg = int(round(self.batch_size * self.fg_ratio))
        if len(self.fg_idx) == 0:
            n_fg = 0
        elif len(self.bg_idx) == 0:
            n_fg = self.batch_size
        for _ in range(max_tries):
            frames = np.sort(rng.choice(self.T, size=self.n_frames, replace=False))
            s1, o1 = self._draw(rng, self.fg_idx, frames, n_fg)
            s2, o2 = self._draw(rng, self.bg_idx, frames, self.batch_size - n_fg)
            sel = np.concatenate([s1, s2])
            if len(sel) >= 2:
                break
        else:
            raise RuntimeError("trajectory sampler: no frame draw with >= 2 usable trajectories")
        order = np.concatenate([o1, o2])
        t_src = frames[order[:, 0]]
        t_tgt = frames[order[:, 1]]
        used = np.unique(np.concatenate([t_src, t_tgt]))
        pos = {int(f): i for i, f in enumerate(used)}
        src_fi = np.array([pos[int(f)] for f in t_src], np.int64)
        tgt_fi = np.array([pos[int(f)] for f in t_tgt], np.int64)
        src_xy = self.traj[sel, t_src]
        tgt_xy = self.traj[sel, t_tgt]
        return Batch(used, src_fi, tgt_fi, src_xy.astype(np.float32), tgt_xy.astype(np.float32))
