"""Query points from an object mask: a grid kept inside the mask, or K points spread over it.

Why: the query pattern users bring from CoTracker is a grid restricted to an object (``grid_size`` +
``segm_mask``); a whole-frame grid spends most points on the background. Two ways:

* ``mask_grid_queries``: the N x N grid of ``grid_queries``, only the points whose pixel is in the mask;
* ``points_from_mask``: K points spread evenly over the mask (seeded farthest-point start, then a few
  k-means steps so the points sit inside the shape rather than on its border, each snapped to a mask
  pixel). The same seed gives the same points.

The mask is an image of the video's size; pixels count as object when > 127 (8-bit masks, JPEG ringing
excluded) or, for label / palette masks whose values stay below 128, when > 0.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .masks import read_mask
from .queries import Queries, grid_queries


def load_mask(path, height: int, width: int, flag: str = "--grid-mask") -> np.ndarray:
    """(H, W) bool mask from an image file (the rule of ``cosettle.io.masks``), checked against the video's size."""
    m = read_mask(path, flag)
    if m.shape != (height, width):
        raise UserError(f"{flag} {path} is {m.shape[0]}x{m.shape[1]} (HxW), the video is {height}x{width}",
                        "use a mask of the video's size")
    if not m.any():
        raise UserError(f"{flag} {path} is empty (no object pixel)", "pass a mask with the object set")
    return m


def mask_grid_queries(mask: np.ndarray, grid_size: int, frame: int = 0) -> Queries:
    """The ``grid_size`` x ``grid_size`` grid points whose pixel lies in ``mask`` (H, W bool)."""
    h, w = mask.shape
    q = grid_queries(h, w, grid_size, frame, mask=mask.astype(np.uint8))
    return q


def points_from_mask(mask: np.ndarray, num_points: int, frame: int = 0, seed: int = 0,
                     iterations: int = 10, max_candidates: int = 20000) -> Queries:
    """``num_points`` points spread over ``mask`` (H, W bool), deterministic in ``seed``."""
    if num_points < 1:
        raise UserError(f"--num-points must be >= 1, got {num_points}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise UserError("the mask is empty", "pass a mask with the object set")
    if num_points > len(xs):
        raise UserError(f"--num-points {num_points} exceeds the mask's {len(xs)} pixels", "ask for fewer points")
    rng = np.random.default_rng(seed)
    pix = np.stack([xs, ys], axis=1).astype(np.float64)
    cand = pix if len(pix) <= max_candidates else pix[rng.choice(len(pix), max_candidates, replace=False)]
    # farthest-point start: evenly spread, including the shape's extremes
    chosen = [int(rng.integers(len(cand)))]
    d = np.linalg.norm(cand - cand[chosen[0]], axis=1)
    for _ in range(1, num_points):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(cand - cand[nxt], axis=1))
    centres = cand[chosen].copy()
    # a few k-means steps pull the points off the border into the middle of their share of the mask
    for _ in range(iterations):
        lab = np.argmin(((cand[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(num_points):
            members = cand[lab == k]
            if len(members):
                centres[k] = members.mean(axis=0)
    # snap each to its nearest mask pixel (a concave shape's centroid can fall outside), distinct pixels
    used: set[int] = set()
    out = np.empty((num_points, 2))
    for k, c in enumerate(centres):
        order = np.argsort(np.linalg.norm(pix - c, axis=1))
        j = next(int(i) for i in order if int(i) not in used)
        used.add(j)
        out[k] = pix[j]
    txy = np.concatenate([np.full((num_points, 1), float(frame)), out], axis=1)
    return Queries(txy, [f"m{i}" for i in range(num_points)])
