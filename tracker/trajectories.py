"""Long-range trajectories by chaining consecutive optical flows (DINO-Tracker spec section 2.1).

Output: (N, T, 2) float32 (x, y) in work pixels, NaN where the trajectory is absent. Each trajectory
is valid on one contiguous interval [start, end] (validity is cumulative: once lost, always lost).

Per start frame s (0 .. T-2), seeds are the lattice points of frame s that are flow-inconsistent
(``cons[s]`` false) or not yet occupied by an earlier kept trajectory; at s = 0 every lattice point is
seeded. Seeds are chained with the consecutive flows; a point is dropped when its forward-backward error
exceeds ``fb_threshold`` (1.5 px), when it leaves the image, or -- the direct-flow filter -- when it
drifts more than ``direct_threshold`` (2.5 px) from where the direct flow s -> s+k puts it (only where
that direct flow is itself forward-backward consistent).

Differences from the reference, on purpose:
* direct flows only for k = 2 .. ``direct_window`` (reference: every later frame, T(T-1) flow calls,
  2646 RAFT calls for T = 50). k = 1 is the consecutive flow itself (the check is vacuous there), so
  it is never recomputed. Beyond the window only the consecutive checks apply.
* ``stride`` seeds on a stride-s pixel lattice instead of every pixel (s = 1 is the reference). A
  lattice point counts as occupied when an earlier trajectory rounds to it at that stride
  (``round(p / s)``), so s = 1 reproduces the reference rule. N shrinks about s^2-fold.
* every flow call is counted and logged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .flow import FlowEstimator, fb_consistency, inside, sample_flow, step_points

log = logging.getLogger(__name__)


@dataclass
class TrajectoryStats:
    num_trajectories: int = 0
    flow_calls: int = 0        # direct flows computed here (consecutive flows are counted by the caller)
    seconds: float = 0.0
    per_start: list = field(default_factory=list)  # kept trajectories per start frame


def consistency_masks(fwd: np.ndarray, bwd: np.ndarray, fb_threshold: float) -> np.ndarray:
    """(T, H, W) bool: pixel of frame i is reached consistently from frame i-1 (False at frame 0)."""
    T = fwd.shape[0] + 1
    cons = np.zeros((T,) + fwd.shape[1:3], bool)
    for i in range(T - 1):
        err, covered = fb_consistency(fwd[i], bwd[i])
        cons[i + 1] = (err < fb_threshold) & covered
    return cons


def chain_trajectories(fwd: np.ndarray, bwd: np.ndarray, frames=None, estimator: FlowEstimator | None = None,
                       fb_threshold: float = 1.5, direct_threshold: float = 2.5, direct_window: int = 8,
                       min_len: int = 2, stride: int = 1, use_direct: bool = True,
                       progress: bool = False) -> tuple[np.ndarray, TrajectoryStats]:
    """Chain ``fwd[i] = flow(i -> i+1)`` / ``bwd[i] = flow(i+1 -> i)`` into trajectories.

    ``frames`` and ``estimator`` are needed only for the direct-flow filter (``use_direct`` and
    ``direct_window >= 2``).
    """
    from tqdm.auto import tqdm

    tic = time.time()
    T = fwd.shape[0] + 1
    H, W = fwd.shape[1:3]
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    direct = use_direct and direct_window >= 2 and T > 2
    if direct and (frames is None or estimator is None):
        raise ValueError("the direct-flow filter needs frames and a flow estimator")
    calls0 = estimator.calls if estimator is not None else 0

    cons = consistency_masks(fwd, bwd, fb_threshold)
    ly, lx = np.arange(0, H, stride), np.arange(0, W, stride)
    gx, gy = np.meshgrid(lx, ly)
    lattice = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # (L, 2)
    lh, lw = len(ly), len(lx)
    occupied = np.zeros((T, lh, lw), bool)
    cons_lat = cons[:, ly][:, :, lx]

    blocks: list[tuple[int, np.ndarray]] = []
    stats = TrajectoryStats()
    bar = tqdm(range(T - 1), desc="trajectories" + (" (direct filter)" if direct else ""), unit="frame",
               disable=not progress, leave=False)
    for s in bar:
        seed = ~occupied[s].ravel() | ~cons_lat[s].ravel() if s > 0 else np.ones(lh * lw, bool)
        p = lattice[seed]
        m, n_steps = len(p), T - 1 - s
        out = np.full((m, n_steps + 1, 2), np.nan, np.float32)
        out[:, 0] = p
        alive = np.arange(m)
        pos = p.copy()
        for idx in range(n_steps):
            if not len(alive):
                break
            t, k = s + idx, idx + 1
            c1, err, ins = step_points(pos[alive], fwd[t], bwd[t])
            keep = (err < fb_threshold) & ins
            if direct and 2 <= k <= direct_window:
                target, reliable = _direct_targets(frames, estimator, s, s + k, p[alive], fb_threshold)
                e = np.linalg.norm(c1 - target, axis=1)
                keep &= ~reliable | (e < direct_threshold)
            alive = alive[keep]
            pos[alive] = c1[keep]
            out[alive, k] = c1[keep]
        length = np.isfinite(out[:, :, 0]).sum(1)
        out = out[length >= min_len]
        stats.per_start.append(int(len(out)))
        if len(out):
            blocks.append((s, out))
            # mark occupancy of later frames (the seeding rule of the next start frames)
            for k in range(1, out.shape[1]):
                xy = out[:, k]
                ok = np.isfinite(xy[:, 0])
                ci = np.rint(xy[ok] / stride).astype(np.int64)
                good = (ci[:, 0] >= 0) & (ci[:, 0] < lw) & (ci[:, 1] >= 0) & (ci[:, 1] < lh)
                occupied[s + k, ci[good, 1], ci[good, 0]] = True
        bar.set_postfix(n=sum(stats.per_start))
    bar.close()

    n = sum(len(b) for _, b in blocks)
    traj = np.full((n, T, 2), np.nan, np.float32)
    row = 0
    while blocks:  # pop as we copy so the blocks are freed while the packed array fills
        s, b = blocks.pop(0)
        traj[row:row + len(b), s:] = b
        row += len(b)
        del b
    stats.num_trajectories = n
    stats.flow_calls = (estimator.calls - calls0) if estimator is not None else 0
    stats.seconds = time.time() - tic
    log.info("trajectories%s: %d from %d start frames (stride %d), %d direct-flow calls, %.1fs",
             " (direct filter, window %d)" % direct_window if direct else "", n, T - 1, stride,
             stats.flow_calls, stats.seconds)
    return traj, stats


def _direct_targets(frames, estimator, s: int, t: int, p: np.ndarray, fb_threshold: float):
    """Where the direct flow s -> t puts seeds ``p``, and whether that flow is reliable there.

    Reliable = the direct pair's own forward-backward error < ``fb_threshold`` (the reference uses the
    consecutive threshold 1.5 here, not the 2.5 px of the filter) and the target is inside the image.
    Seeds are lattice points (integers), so the lookup needs no interpolation.
    """
    # each (s, t) pair is needed at exactly one chaining step, so nothing is cached
    d, r = estimator(frames[s], frames[t]), estimator(frames[t], frames[s])
    h, w = d.shape[:2]
    xi, yi = p[:, 0].astype(np.int64), p[:, 1].astype(np.int64)
    target = p + d[yi, xi]
    back = target + sample_flow(r, target)
    reliable = (np.linalg.norm(back - p, axis=1) < fb_threshold) & inside(target, h, w)
    return target.astype(np.float32), reliable



def trajectory_lengths(traj: np.ndarray) -> np.ndarray:
    return np.isfinite(traj[:, :, 0]).sum(1)


def trajectory_starts(traj: np.ndarray) -> np.ndarray:
    """(N,) first valid frame of each trajectory."""
    return np.argmax(np.isfinite(traj[:, :, 0]), axis=1)
