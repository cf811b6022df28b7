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
  runs ``select_pairs`` limits the pairs to ``|s - t| <= window`` and/or a seeded random subset of
  ``max_pairs`` unordered pairs. The tracker's BB loss samples from the pairs present.
* NMS: only the two best survivors are needed, and greedy NMS always keeps the best box and then the
  best box not suppressed by it, so a2 = max affinity among the top-k candidates with IoU(best) <= iou.
  Same result as torchvision's batched_nms, vectorised, without torchvision or sorting.
* r is clamped to [0, 1] (a negative second peak counts as no ambiguity).
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from cosettle.geometry import Geometry

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
    """For each frame, the index of the trajectory nearest to every feature cell (spec 2.4 c)."""

    def __init__(self, traj: np.ndarray | None, cells_xy: np.ndarray):
        self.traj = traj
        self.valid = None if traj is None else np.isfinite(traj[:, :, 0])
        self.cells = cells_xy.reshape(-1, 2)
        self._cache: dict[int, np.ndarray] = {}

    def at(self, frame: int) -> np.ndarray:
        """(K,) trajectory index per cell, -1 where no trajectory exists at ``frame``."""
        if frame not in self._cache:
            from scipy.spatial import cKDTree

            if self.traj is None:
                self._cache[frame] = np.full(len(self.cells), -1, np.int64)
            else:
                ids = np.nonzero(self.valid[:, frame])[0]
                if len(ids) == 0:
                    self._cache[frame] = np.full(len(self.cells), -1, np.int64)
                else:
                    # unbalanced, non-compact trees build ~2x faster; one query batch per tree
                    tree = cKDTree(self.traj[ids, frame].astype(np.float64), balanced_tree=False,
                                   compact_nodes=False)
                    _, nn = tree.query(self.cells, k=1)
                    self._cache[frame] = ids[nn]
        return self._cache[frame]

    def connected(self, cells: np.ndarray, frame_from: int, frame_to: int) -> np.ndarray:
        """(B,) bool: the trajectory nearest to each cell at ``frame_from`` is present at ``frame_to``."""
        nn = self.at(frame_from)[cells]
        out = np.zeros(len(cells), bool)
        ok = nn >= 0
        out[ok] = self.valid[nn[ok], frame_to]
        return out


def compute_best_buddies(features: torch.Tensor, geometry: Geometry, pairs, trajectories: np.ndarray | None = None,
                         box: float = 30.0, iou: float = 0.2, topk: int = 400, flow_filter: bool = True,
                         progress: bool = False) -> tuple[dict, dict]:
    """Best buddies for the unordered ``pairs``; returns ({(s, t): entry} with both orders, stats).

    entry = {"src": (B, 2) float32 input px in frame s, "dst": (B, 2) in frame t, "cos": (B,), "r": (B,)}.
    """
    from tqdm.auto import tqdm

    tic = time.time()
    T, C, h, w = features.shape
    cells = torch.as_tensor(geometry.cell_centers("input").reshape(-1, 2), dtype=torch.float32)
    near = NearestTrajectory(trajectories if flow_filter else None, cells.numpy().astype(np.float64))
    out: dict = {}
    n_raw = n_kept = 0
    for s, t in tqdm(pairs, desc="best buddies", unit="pair", disable=not progress, leave=False):
        fs = features[s].reshape(C, -1).T
        ft = features[t].reshape(C, -1).T
        ia, ib, cos, aff, aff_t = mutual_nn(fs, ft, return_transposed=True)
        n_raw += len(ia)
        if flow_filter and trajectories is not None:
            keep = ~near.connected(ia.numpy(), s, t) & ~near.connected(ib.numpy(), t, s)
            keep = torch.from_numpy(keep)
            ia, ib, cos = ia[keep], ib[keep], cos[keep]
        n_kept += len(ia)
        r_st = ambiguity_ratio(aff[ia], (h, w), geometry.stride, box, iou, topk)
        r_ts = ambiguity_ratio(aff_t[ib], (h, w), geometry.stride, box, iou, topk)  # t -> s direction
        r = torch.maximum(r_st, r_ts)  # symmetrised: r(s,t,i) = r(t,s,i) = max of both directions
        src, dst = cells[ia].numpy(), cells[ib].numpy()
        c, rr = cos.numpy().astype(np.float32), r.numpy().astype(np.float32)
        out[(s, t)] = {"src": src, "dst": dst, "cos": c, "r": rr}
        out[(t, s)] = {"src": dst.copy(), "dst": src.copy(), "cos": c.copy(), "r": rr.copy()}
    stats = {"pairs": len(pairs), "ordered_pairs": len(out), "mutual_nn": n_raw, "kept": n_kept,
             "seconds": time.time() - tic}
    log.info("best buddies: %d unordered pairs, %d mutual NNs, %d kept after the flow filter, %.1fs",
             len(pairs), n_raw, n_kept, stats["seconds"])
    return out, stats


def save_best_buddies(path, bb: dict) -> None:
    """One npz: ``pairs`` (P, 2), ``offsets`` (P+1,), and concatenated src/dst/cos/r. Atomic."""
    from cosettle.io.atomic import atomic_path

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
