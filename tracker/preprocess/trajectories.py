"""Long-range trajectories by chaining consecutive optical flows (DINO-Tracker spec section 2.1).

Output: a :class:`~tracker.preprocess.trajectory_store.TrajectoryStore` of (x, y) work pixels. Each trajectory is
valid on one contiguous interval [start, end] (validity is cumulative: once lost, always lost), so it is
stored sparsely as (start, length, points); ``store.dense()`` gives the (N, T, 2) NaN array.

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
* one sweep over time chains all start frames together, reading each flow once and storing points
  sparsely: memory and time linear in the clip length (the per-start-frame form re-reads the flows
  of every later frame for each start frame and its dense output grows like T^2).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cosettle.progress import tqdm

from ..eta import StageTimes
from .flow import FlowEstimator, fb_consistency, inside, sample_flow, step_points
from .trajectory_store import TrajectoryStore, as_store

log = logging.getLogger(__name__)


@dataclass
class TrajectoryStats:
    num_trajectories: int = 0
    flow_calls: int = 0        # direct flows computed here (consecutive flows are counted by the caller)
    seconds: float = 0.0
    per_start: list = field(default_factory=list)  # kept trajectories per start frame


def consistency_masks(fwd, bwd, fb_threshold: float) -> np.ndarray:
    """(T, H, W) bool: pixel of frame i is reached consistently from frame i-1 (False at frame 0)."""
    T = len(fwd) + 1
    cons = np.zeros((T,) + tuple(fwd.shape[1:3]), bool)
    for i in range(T - 1):
        cons[i + 1] = consistency_at(fwd, bwd, i + 1, fb_threshold)
    return cons


def consistency_at(fwd, bwd, frame: int, fb_threshold: float) -> np.ndarray:
    """(H, W) bool consistency mask of ``frame`` >= 1 (from the flows of frame-1 <-> frame)."""
    err, covered = fb_consistency(np.asarray(fwd[frame - 1]), np.asarray(bwd[frame - 1]))
    return (err < fb_threshold) & covered


def chain_trajectories(fwd, bwd, frames=None, estimator: FlowEstimator | None = None,
                       fb_threshold: float = 1.5, direct_threshold: float = 2.5, direct_window: int = 8,
                       min_len: int = 2, stride: int = 1, use_direct: bool = True,
                       progress: bool = False,
                       eta: StageTimes | None = None) -> tuple[TrajectoryStore, TrajectoryStats]:
    """Chain ``fwd[i] = flow(i -> i+1)`` / ``bwd[i] = flow(i+1 -> i)`` into a :class:`TrajectoryStore`.

    ``fwd``/``bwd``/``frames`` may be arrays or lazy per-frame readers (``tracker.preprocess.lazy_array``): they are
    read one frame at a time. ``frames`` and ``estimator`` are needed only for the direct-flow filter
    (``use_direct`` and ``direct_window >= 2``).

    One sweep over time carries every live trajectory (all start frames at once), so each flow is
    read once and the work is linear in the number of points; seeding, checks, order (by start frame,
    then lattice order) and values equal the per-start-frame chaining of the module docstring: a
    trajectory alive at frame s has length >= 2, so with ``min_len <= 2`` the trajectories alive at s are
    exactly the kept earlier ones that occupy frame s. With ``min_len > 2`` a trajectory still alive at s
    but ending before ``min_len`` also blocks seeding at s (the reference marks only kept ones).
    ``eta``: the run's time estimate, told of every frame (the longest preprocessing stage).
    """
    eta = eta if eta is not None else StageTimes()
    tic = time.time()
    T = len(fwd) + 1
    H, W = fwd.shape[1:3]
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    direct = use_direct and direct_window >= 2 and T > 2
    if direct and (frames is None or estimator is None):
        raise ValueError("the direct-flow filter needs frames and a flow estimator")
    calls0 = estimator.calls if estimator is not None else 0

    ly, lx = np.arange(0, H, stride), np.arange(0, W, stride)
    gx, gy = np.meshgrid(lx, ly)
    lattice = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # (L, 2)
    lh, lw = len(ly), len(lx)

    ids = np.zeros(0, np.int64)              # live trajectories (ascending ids)
    pos = np.zeros((0, 2), np.float32)       # their positions at the current frame
    seeds = np.zeros((0, 2), np.float32)     # their seed points (direct-flow filter)
    start_of: list[np.ndarray] = []          # start frame per id, one block per seeding frame
    chunks: list[tuple[np.ndarray, np.ndarray]] = []  # per frame: (ids, xy) of the live trajectories
    bar = tqdm(range(T), desc="trajectories" + (" (direct filter)" if direct else ""), unit="frame",
               disable=not progress, leave=False)
    next_id = 0

    eta_stage = "trajectories" if use_direct else "trajectories_nodirect"  # the preprocessing stage name
    for t in bar:
        if t > 0 and len(ids):
            ids, pos, seeds = _advance(fwd, bwd, frames, estimator, t, ids, pos, seeds, start_of,
                                       fb_threshold, direct, direct_window, direct_threshold)
        if t <= T - 2:
            if t == 0:
                seed = np.ones(lh * lw, bool)
            else:
                occupied = np.zeros((lh, lw), bool)
                ci = np.rint(pos / stride).astype(np.int64)
                good = (ci[:, 0] >= 0) & (ci[:, 0] < lw) & (ci[:, 1] >= 0) & (ci[:, 1] < lh)
                occupied[ci[good, 1], ci[good, 0]] = True
                cons = consistency_at(fwd, bwd, t, fb_threshold)[ly][:, lx]
                seed = ~occupied.ravel() | ~cons.ravel()
            p = lattice[seed]
            new = np.arange(next_id, next_id + len(p))
            next_id += len(p)
            start_of.append(np.full(len(p), t, np.int32))
            ids = np.concatenate([ids, new])
            pos = np.concatenate([pos, p])
            seeds = np.concatenate([seeds, p])
        if len(ids):
            chunks.append((t, ids.astype(np.int32), pos))  # pos is never modified in place
        bar.set_postfix(live=len(ids))
        eta.advance(eta_stage)  # the time-left estimate times the longest preprocessing stage per frame
    bar.close()

    store, per_start = _pack(chunks, np.concatenate(start_of) if start_of else np.zeros(0, np.int32),
                             T, min_len)
    stats = TrajectoryStats(num_trajectories=len(store), per_start=per_start)
    stats.flow_calls = (estimator.calls - calls0) if estimator is not None else 0
    stats.seconds = time.time() - tic
    log.info("trajectories%s: %d from %d start frames (stride %d), %d points, %d direct-flow calls, %.1fs",
             " (direct filter, window %d)" % direct_window if direct else "", len(store), T - 1, stride,
             len(store.points), stats.flow_calls, stats.seconds)
    return store, stats


def _advance(fwd, bwd, frames, estimator, t, ids, pos, seeds, start_of, fb_threshold, direct, window,
             direct_threshold):
    """Move the live trajectories from frame t-1 to t; drop the ones failing the checks."""
    c1, err, ins = step_points(pos, np.asarray(fwd[t - 1]), np.asarray(bwd[t - 1]))
    keep = (err < fb_threshold) & ins
    if direct:
        starts = _starts_of(ids, start_of)
        for s in range(max(0, t - window), t - 1):  # k = t - s in 2 .. window
            grp = np.flatnonzero(starts == s)
            if not len(grp):
                continue
            target, reliable = _direct_targets(frames, estimator, s, t, seeds[grp], fb_threshold)
            e = np.linalg.norm(c1[grp] - target, axis=1)
            keep[grp] &= ~reliable | (e < direct_threshold)
    return ids[keep], c1[keep], seeds[keep]


def _starts_of(ids: np.ndarray, start_of: list[np.ndarray]) -> np.ndarray:
    """Start frame of each id (ids are numbered in seeding order)."""
    sizes = np.array([len(b) for b in start_of], np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)])
    return np.searchsorted(first, ids, side="right") - 1


def _pack(chunks, starts_all: np.ndarray, T: int, min_len: int) -> tuple[TrajectoryStore, list]:
    """Frame-major (t, ids, xy) chunks -> trajectory-major store of the trajectories with >= min_len points."""
    n_all = len(starts_all)
    lengths = np.zeros(n_all, np.int64)
    for _, cid, _ in chunks:
        lengths[cid] += 1
    keep = lengths >= min_len
    new_id = np.cumsum(keep) - 1
    starts = starts_all[keep]
    lens = lengths[keep]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    points = np.empty((int(offsets[-1]), 2), np.float32)
    while chunks:  # pop as we scatter so the frame-major copy is freed while the store fills
        t, cid, xy = chunks.pop(0)
        ok = keep[cid]
        j = new_id[cid[ok]]
        points[offsets[j] + t - starts[j]] = xy[ok]
    per_start = np.bincount(starts, minlength=max(T - 1, 0))[:max(T - 1, 0)].tolist()
    return TrajectoryStore(starts, lens, points, T), [int(x) for x in per_start]


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



def trajectory_lengths(traj) -> np.ndarray:
    """(N,) valid frames per trajectory (store or dense array)."""
    return as_store(traj).lengths.astype(np.int64)


def trajectory_starts(traj) -> np.ndarray:
    """(N,) first valid frame of each trajectory (store or dense array)."""
    return as_store(traj).starts.astype(np.int64)
