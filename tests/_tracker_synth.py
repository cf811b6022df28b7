"""A hand-made ``Preprocessed`` for tracker tests: a smooth random texture translated by a known
shift per frame, exact trajectories, a centre-box foreground mask, no best buddies."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    small = (rng.random((h // 4 + 1, w // 4 + 1, 3)) * 255).astype(np.float32)
    big = cv2.resize(small, (4 * (w // 4 + 1), 4 * (h // 4 + 1)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0, 255).astype(np.uint8)


def translating_clip(h=64, w=96, t=6, dx=3, dy=1, margin=24, seed=0):
    """Frames (t, h, w, 3) cut from a larger texture, content moving by (-dx, -dy) px per frame...
    i.e. a scene point at (x, y) in frame 0 is at (x - dx*k, y - dy*k) in frame k."""
    big = texture(h + 2 * margin + abs(dy) * t, w + 2 * margin + abs(dx) * t, seed)
    frames = np.stack([big[margin + dy * k: margin + dy * k + h, margin + dx * k: margin + dx * k + w]
                       for k in range(t)])
    return frames


def gt_track(q, t, dx, dy):
    """(N,3) queries (t, x, y) -> (N, T, 2) exact positions under the clip's motion."""
    q = np.asarray(q, np.float64)
    k = np.arange(t)[None, :] - q[:, :1]
    return np.stack([q[:, 1:2] - dx * k, q[:, 2:3] - dy * k], axis=-1)


def synthetic_prep(backend, h=64, w=96, t=6, dx=3, dy=1, step=2, seed=0):
    frames = translating_clip(h, w, t, dx, dy, seed=seed)
    feats = backend.extract(frames)
    geom = feats.geometry
    assert (geom.input_h, geom.input_w) == (h, w)
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    q = np.stack([np.zeros(xs.size), xs.ravel(), ys.ravel()], 1)
    tr = gt_track(q, t, dx, dy).astype(np.float32)
    out = (tr[..., 0] < 0) | (tr[..., 0] > w - 1) | (tr[..., 1] < 0) | (tr[..., 1] > h - 1)
    tr[out] = np.nan
    masks = np.zeros((t, h, w), bool)
    masks[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    fg = masks[0][ys.ravel(), xs.ravel()]
    return types.SimpleNamespace(geometry=geom, frames=frames, features=feats.features, trajectories=tr,
                                 traj_fg=fg, masks=masks, best_buddies={}, work_dir=Path("."), stats={})
