"""DINO best buddies: mutual nearest neighbours between frames of the raw backend features
(DINO-Tracker spec section 2.4), the flow filter and the NMS ambiguity ratio r.

For a frame pair (s, t): cell n of frame s and cell m of frame t are best buddies when m is the
cosine nearest neighbour of n in frame t and n is that of m in frame s. Then

* flow filter: keep a pair (p in s, q in t) only where flow does NOT already connect the frames, i.e.
  the trajectory nearest to p at s is absent at t AND the trajectory nearest to q at t is absent at s
  (trajectories without the direct filter, nearest = Euclidean, no distance cap);
* ambiguity ratio: take the ``topk`` (400) most similar target cells, put a box of +-``box`` px
  (30, work pixels) around each, greedy-NMS them at IoU ``iou`` (0.2); r = a2 / a1 with a1 >= a2 the
  two best surviving affinities (0 when one peak survives). Computed in both directions, r = max.

Differences from the reference, on purpose:
* pairs: the reference computes all T(T-1) ordered pairs (2450 cosine matrices for T = 50). A pair's
  mutual NNs are symmetric, so we compute each unordered pair once and store both directions; for CPU
  runs ``select_pairs`` limits the precomputed pairs to ``|s - t| <= window`` and/or a seeded random
  subset of ``max_pairs`` unordered pairs. :class:`BestBuddyProvider` instead computes any pair the
  trainer draws on demand (same rule, an LRU cache; the reference precomputes all pairs, O(T^2)).
* NMS: only the two best survivors are needed, and greedy NMS always keeps the best box and then the
  best box not suppressed by it, so a2 = max affinity among the top-k candidates with IoU(best) <= iou.
  Same result as torchvision's batched_nms, vectorised, without torchvision or sorting.
* r is clamped to [0, 1] (a negative second peak counts as no ambiguity).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from cosettle.geometry import Geometry
from cosettle.io.atomic import atomic_path
from cosettle.progress import tqdm

from .trajectory_store import as_store

log = logging.getLogger(__name__)


def select_pairs(num_frames: int, max_pairs: int = 0, window: int = 0, seed: int = 0) -> list[tuple[int, int]]:
    """Unordered frame pairs (s < t): within ``window`` frames (0 = any), at most ``max_pairs`` (0 = all),
    a seeded random subset when limited. Sorted."""
    pairs = [(s, t) for s in range(num_frames) for t in range(s + 1, num_frames)
             if window <= 0 or t - s <= window]
    if 0 < max_pairs < len(pairs):
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


def mutual_nn(fa: torch.Tensor, fb: torch.Tensor, return_transposed: bool = False):
    """Mutual nearest neighbours between (M, C) and (K, C) feature sets (cosine).

    Returns (ia (B,), ib (B,), cos (B,), affinity (M, K)[, affinity.T contiguous (K, M)]).
    Ties: the first maximum. On CPU the argmax runs on contiguous rows (numpy): a column argmax over
    a row-major matrix was the slowest step, so the transposed copy is made once and reused. Works on
    any device (the trainer's refined best buddies call it on the training device).
    """
    a = F.normalize(fa.float(), dim=1)
    b = F.normalize(fb.float(), dim=1)
    aff = torch.mm(a, b.T)
    aff_t = aff.T.contiguous()
    row = _argmax_rows(aff)  # best m for every n
    col = _argmax_rows(aff_t)  # best n for every m
    ia = torch.nonzero(col[row] == torch.arange(len(a), device=aff.device), as_tuple=False)[:, 0]
    ib = row[ia]
    out = (ia, ib, aff[ia, ib], aff)
    return out + (aff_t,) if return_transposed else out


def _argmax_rows(m: torch.Tensor) -> torch.Tensor:
    if m.device.type == "cpu":
        return torch.from_numpy(m.detach().numpy().argmax(1))
    return m.argmax(1)


def suppression_stencil(step: float, box: float = 30.0, iou: float = 0.2) -> torch.Tensor:
    """(S, 2) cell offsets (di, dj) whose box overlaps the centre cell's box with IoU > ``iou``.

    Boxes are squares of side 2*box centred on cells ``step`` px apart (torchvision convention,
    area = side^2), so the IoU depends only on the offset.
    """
    side = 2.0 * box
    n = int(np.ceil(side / step))
    d = torch.arange(-n, n + 1)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    inter = (side - di.abs() * step).clamp_min(0) * (side - dj.abs() * step).clamp_min(0)
    keep = inter / (2 * side * side - inter) > iou
    return torch.stack([di[keep], dj[keep]], dim=1)


def ambiguity_ratio(aff_rows: torch.Tensor, grid_hw: tuple[int, int], step: float, box: float = 30.0,
                    iou: float = 0.2, topk: int = 400, chunk: int = 512) -> torch.Tensor:
    """r = a2 / a1 per row of ``aff_rows`` (B, h*w) over a row-major grid of cells ``step`` px apart.

    Greedy NMS keeps the best candidate, then the best one whose IoU with it is <= ``iou``; that
    second survivor only counts when it is among the ``topk`` candidates, i.e. fewer than ``topk``
    affinities exceed it. No sorting, no per-candidate boxes (a top-400 + NMS per row was the slow
    part on CPU).
    """
    h, w = grid_hw
    sten = suppression_stencil(step, box, iou)
    out = []
    for s in range(0, aff_rows.shape[0], chunk):
        rows = aff_rows[s:s + chunk]
        a1, best = rows.max(1)
        ii = best[:, None] // w + sten[None, :, 0]
        jj = best[:, None] % w + sten[None, :, 1]
        ok = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        idx = torch.where(ok, ii * w + jj, best[:, None])  # out-of-grid offsets hit the best cell again
        a2 = rows.clone().scatter_(1, idx, -float("inf")).max(1).values
        valid = torch.isfinite(a2)
        if len(sten) >= topk:
            # only suppressed cells can beat a2 (it is the best unsuppressed one), so the rank of a2
            # is the count of stencil cells above it; with fewer stencil cells than topk it is always in
            above = ((torch.gather(rows, 1, idx) > a2[:, None]) & ok).sum(1)
            valid &= above < topk
        r = torch.where(valid, a2 / a1.clamp_min(1e-12), torch.zeros_like(a1))
        r = torch.where(a1 > 0, r, torch.ones_like(a1))  # no positive peak at all: fully ambiguous
        out.append(r.clamp(0.0, 1.0))
    return torch.cat(out) if out else aff_rows.new_zeros(0)


class NearestTrajectory:
    """For each frame, the index of the trajectory nearest to every feature cell (spec 2.4 c).

    ``traj``: a :class:`~tracker.preprocess.trajectory_store.TrajectoryStore`, a dense (N, T, 2) array, or None
    (no trajectories: nothing is connected). Per-frame answers are kept in an LRU cache of
    ``max_frames`` frames, so memory does not grow with the clip length.
    """

    def __init__(self, traj, cells_xy: np.ndarray, max_frames: int = 256):
        self.store = None if traj is None else as_store(traj)
        self.cells = cells_xy.reshape(-1, 2)
        self.max_frames = int(max_frames)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def at(self, frame: int) -> np.ndarray:
        """(K,) trajectory index per cell, -1 where no trajectory exists at ``frame``."""
        if frame in self._cache:
            self._cache.move_to_end(frame)
            return self._cache[frame]

        ids, xy = (np.zeros(0, np.int64), None) if self.store is None else self.store.at_frame(frame)
        if len(ids) == 0:
            nn = np.full(len(self.cells), -1, np.int64)
        else:
            # unbalanced, non-compact trees build ~2x faster; one query batch per tree
            tree = cKDTree(xy.astype(np.float64), balanced_tree=False, compact_nodes=False)
            _, k = tree.query(self.cells, k=1)
            nn = ids[k]
        self._cache[frame] = nn
        if len(self._cache) > self.max_frames:
            self._cache.popitem(last=False)
        return nn

    def connected(self, cells: np.ndarray, frame_from: int, frame_to: int) -> np.ndarray:
        """(B,) bool: the trajectory nearest to each cell at ``frame_from`` is present at ``frame_to``."""
        nn = self.at(frame_from)[cells]
        out = np.zeros(len(cells), bool)
        ok = nn >= 0
        out[ok] = self.store.valid_at(nn[ok], frame_to)
        return out


@dataclass
class BBParams:
    """The best-buddy rule's settings (same meaning as the arguments of :func:`compute_best_buddies`)."""

    box: float = 30.0
    iou: float = 0.2
    topk: int = 400
    flow_filter: bool = True


def pair_best_buddies(fs: torch.Tensor, ft: torch.Tensor, s: int, t: int, geometry: Geometry,
                      cells: torch.Tensor, near: "NearestTrajectory | None", p: BBParams) -> tuple[dict, int]:
    """Best buddies of frames s, t from their (C, h, w) features -> (entry for (s, t), mutual NNs before
    the flow filter). The one rule used by the precomputed stage and by :class:`BestBuddyProvider`."""
    C, h, w = fs.shape
    ia, ib, cos, aff, aff_t = mutual_nn(fs.reshape(C, -1).T, ft.reshape(C, -1).T, return_transposed=True)
    n_raw = len(ia)
    if p.flow_filter and near is not None and near.store is not None:
        keep = ~near.connected(ia.numpy(), s, t) & ~near.connected(ib.numpy(), t, s)
        keep = torch.from_numpy(keep)
        ia, ib, cos = ia[keep], ib[keep], cos[keep]
    r_st = ambiguity_ratio(aff[ia], (h, w), geometry.stride, p.box, p.iou, p.topk)
    r_ts = ambiguity_ratio(aff_t[ib], (h, w), geometry.stride, p.box, p.iou, p.topk)  # t -> s direction
    r = torch.maximum(r_st, r_ts)  # symmetrised: r(s,t,i) = r(t,s,i) = max of both directions
    entry = {"src": cells[ia].numpy(), "dst": cells[ib].numpy(), "cos": cos.numpy().astype(np.float32),
             "r": r.numpy().astype(np.float32)}
    return entry, n_raw


def swap_entry(e: dict) -> dict:
    """The (t, s) entry of an (s, t) entry."""
    return {"src": e["dst"].copy(), "dst": e["src"].copy(), "cos": e["cos"].copy(), "r": e["r"].copy()}


def compute_best_buddies(features: torch.Tensor, geometry: Geometry, pairs, trajectories=None,
                         box: float = 30.0, iou: float = 0.2, topk: int = 400, flow_filter: bool = True,
                         progress: bool = False) -> tuple[dict, dict]:
    """Best buddies for the unordered ``pairs``; returns ({(s, t): entry} with both orders, stats).

    entry = {"src": (B, 2) float32 input px in frame s, "dst": (B, 2) in frame t, "cos": (B,), "r": (B,)}.
    ``features`` (T, C, h, w): a tensor or a lazy per-frame reader; ``trajectories``: a store, a dense
    array or None.
    """
    tic = time.time()
    cells = torch.as_tensor(geometry.cell_centers("input").reshape(-1, 2), dtype=torch.float32)
    near = NearestTrajectory(trajectories if flow_filter else None, cells.numpy().astype(np.float64))
    params = BBParams(box, iou, topk, flow_filter)
    out: dict = {}
    n_raw = n_kept = 0
    for s, t in tqdm(pairs, desc="best buddies", unit="pair", disable=not progress, leave=False):
        e, raw = pair_best_buddies(features[s], features[t], s, t, geometry, cells, near, params)
        n_raw += raw
        n_kept += len(e["cos"])
        out[(s, t)] = e
        out[(t, s)] = swap_entry(e)
    stats = {"pairs": len(pairs), "ordered_pairs": len(out), "mutual_nn": n_raw, "kept": n_kept,
             "seconds": time.time() - tic}
    log.info("best buddies: %d unordered pairs, %d mutual NNs, %d kept after the flow filter, %.1fs",
             len(pairs), n_raw, n_kept, stats["seconds"])
    return out, stats


class BestBuddyProvider:
    """Best buddies of ANY frame pair, computed on demand: ``provider.get((s, t))``, ``(s, t) in provider``.

    Same rule and values as :func:`compute_best_buddies` (one shared :func:`pair_best_buddies`), from the
    (lazily read) features and the no-direct trajectories. Computed pairs are kept in an LRU cache of
    ``cache_pairs`` unordered pairs; ``precomputed`` (a ``{(s, t): entry}`` dict, e.g. the
    ``best_buddies`` stage) is served first. Memory: the cache + one frame pair's affinity matrix,
    independent of the clip length (all pairs precomputed would be O(T^2): 1,225 pairs at T = 50).

    Pairs offered: every ordered pair s != t with ``|s - t| <= window`` (0 = any). ``counters`` records
    requests, cache hits, computed pairs, pairs without any best buddy and seconds spent, for the
    trainer's coverage log.
    """

    def __init__(self, features, geometry: Geometry, trajectories=None, box: float = 30.0, iou: float = 0.2,
                 topk: int = 400, flow_filter: bool = True, window: int = 0, cache_pairs: int = 512,
                 precomputed: dict | None = None):
        self.features = features
        self.geometry = geometry
        self.num_frames = int(features.shape[0])
        self.window = int(window)
        self.params = BBParams(box, iou, topk, flow_filter)
        self.cells = torch.as_tensor(geometry.cell_centers("input").reshape(-1, 2), dtype=torch.float32)
        self.near = NearestTrajectory(trajectories if flow_filter else None, self.cells.numpy().astype(np.float64))
        self.precomputed = dict(precomputed or {})
        self.cache_pairs = max(1, int(cache_pairs))
        self._cache: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self.counters = {"requested": 0, "precomputed_hits": 0, "cache_hits": 0, "computed": 0, "empty": 0,
                         "seconds": 0.0}

    def _valid(self, key) -> bool:
        try:
            s, t = (int(k) for k in key)
        except (TypeError, ValueError):
            return False
        if s == t or not (0 <= s < self.num_frames and 0 <= t < self.num_frames):
            return False
        return self.window <= 0 or abs(s - t) <= self.window

    def __contains__(self, key) -> bool:
        return self._valid(key)

    def __len__(self) -> int:
        """Ordered pairs offered."""
        T, w = self.num_frames, self.window
        if w <= 0 or w >= T - 1:
            return T * (T - 1)
        return 2 * sum(T - d for d in range(1, w + 1))

    def __bool__(self) -> bool:
        return self.num_frames > 1

    def get(self, key, default=None):
        if not self._valid(key):
            return default
        s, t = (int(k) for k in key)
        self.counters["requested"] += 1
        if (s, t) in self.precomputed:
            self.counters["precomputed_hits"] += 1
            return self.precomputed[(s, t)]
        a, b = min(s, t), max(s, t)
        e = self._cache.get((a, b))
        if e is not None:
            self.counters["cache_hits"] += 1
            self._cache.move_to_end((a, b))
        else:
            tic = time.perf_counter()
            e, _ = pair_best_buddies(self.features[a], self.features[b], a, b, self.geometry, self.cells,
                                     self.near, self.params)
            self.counters["computed"] += 1
            self.counters["empty"] += int(len(e["cos"]) == 0)
            self.counters["seconds"] += time.perf_counter() - tic
            self._cache[(a, b)] = e
            if len(self._cache) > self.cache_pairs:
                self._cache.popitem(last=False)
        return e if (s, t) == (a, b) else swap_entry(e)

    def __getitem__(self, key):
        e = self.get(key)
        if e is None:
            raise KeyError(key)
        return e

    def coverage(self) -> dict:
        """Counters plus the share of requests answered without computing."""
        c = dict(self.counters)
        c["cached_pairs"] = len(self._cache)
        return c


def save_best_buddies(path, bb: dict) -> None:
    """One npz: ``pairs`` (P, 2), ``offsets`` (P+1,), and concatenated src/dst/cos/r. Atomic."""
    keys = sorted(bb)
    sizes = [len(bb[k]["cos"]) for k in keys]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def cat(name, shape):
        arrs = [bb[k][name] for k in keys]
        return np.concatenate(arrs).astype(np.float32) if arrs else np.zeros(shape, np.float32)

    with atomic_path(path) as tmp:
        np.savez(tmp, pairs=np.asarray(keys, np.int64).reshape(-1, 2), offsets=offsets,
                 src=cat("src", (0, 2)), dst=cat("dst", (0, 2)), cos=cat("cos", (0,)), r=cat("r", (0,)))


def load_best_buddies(path) -> dict:
    with np.load(path) as z:
        pairs, off = z["pairs"], z["offsets"]
        src, dst, cos, r = z["src"], z["dst"], z["cos"], z["r"]
    return {(int(s), int(t)): {"src": src[a:b], "dst": dst[a:b], "cos": cos[a:b], "r": r[a:b]}
            for (s, t), a, b in zip(pairs, off[:-1], off[1:])}
