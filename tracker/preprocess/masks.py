"""Foreground masks: from the user (folder of images or an array), backend-feature saliency or motion.

Saliency (DINO-Tracker spec section 2.3): every feature token of the whole video, L2-normalised,
projected on the first principal component; min-max normalised over all tokens; foreground = the
normalised score below ``threshold`` (0.6) *after fixing the sign*.

Differences from the reference, on purpose:
* the PCA is exact and deterministic (eigen-decomposition of the C x C covariance of all tokens,
  accumulated frame by frame) -- the reference uses the randomised, unseeded ``pca_lowrank``;
* sign rule: the component is oriented so that the cells on the border of the frame (background in
  most videos) score *high*, i.e. fall on the background side of the threshold. The reference leaves the
  sign to chance, so FG and BG can swap between runs;
* generated masks are written as PNG (0/255), not JPEG, so "> 0" does not pick up ringing.

Motion masks (not in the reference; for backends whose PCA saliency does not isolate the object):
per consecutive flow, the dominant (camera / background) motion is fitted as a homography with RANSAC
on a regular pixel lattice (deterministic; OpenCV's RANSAC is seeded); a pixel's residual is its flow
minus that motion. Frame t averages the normalised residuals of the forward flow t -> t+1 and the
backward flow t -> t-1 (the last frame has only the backward one, the first only the forward one);
residual > ``threshold`` x the frame's median residual, and at least ``min_residual`` of the frame
diagonal (0.5 %: 2.4 px at 424x240; DIS noise on the background is ~0.2 px) = moving foreground.
Then morphological open/close and only components of at least ``min_area`` of the frame are kept;
every size is a fraction of the frame, none is in pixels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.geometry import Geometry
from cosettle.io.atomic import atomic_path
from cosettle.io.masks import foreground

from .trajectory_store import as_store

log = logging.getLogger(__name__)

MOTION_WINDOW = 8     # longest span (frames) over which motion masks chain the flows
MIN_AUTO_FG = 0.02    # automatic masks below this share of the frame get a warning naming --masks
GROW_BELOW_FG = 0.05  # motion masks below this share retry with a doubled window (slow movers)


def check_masks(masks, num_frames: int, height: int, width: int) -> np.ndarray:
    """User masks (T, H, W[, C]) -> bool by the project's one mask rule (``cosettle.io.masks``); UserError on a
    shape mismatch."""
    m = np.asarray(masks)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 4 and m.shape[-1] in (3, 4):
        m = m[..., :3].max(-1)
    if m.ndim != 3:
        raise UserError(f"masks must be (T, H, W), got shape {m.shape}")
    if m.shape[0] != num_frames:
        raise UserError(f"got {m.shape[0]} masks for a video of {num_frames} frames",
                        "give one mask per frame (same count and order as the frames)")
    if m.shape[1:] != (height, width):
        raise UserError(f"masks are {m.shape[1]}x{m.shape[2]} (HxW), the video is {height}x{width}",
                        "masks must have the video's size")
    return foreground(m)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (T, h, w) bool masks (pixel-centre aligned)."""
    t = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    if t.shape[-2:] == (height, width):
        return masks.astype(bool)
    return (F.interpolate(t, size=(height, width), mode="nearest-exact")[:, 0] > 0.5).numpy()


def saliency_masks(features: torch.Tensor, geometry: Geometry, threshold: float = 0.6,
                   seed: int = 0) -> tuple[np.ndarray, dict]:
    """PCA saliency -> (T, input_h, input_w) bool masks at the work resolution, plus a small report.

    ``seed`` is accepted for API symmetry; the exact PCA below has no randomness.
    """
    T, C, h, w = features.shape
    # covariance streamed frame by frame in float64: exact, deterministic, memory ~ one frame
    s1 = torch.zeros(C, dtype=torch.float64)
    s2 = torch.zeros(C, C, dtype=torch.float64)
    for t in range(T):
        x = _unit_tokens(features[t:t + 1]).double()
        s1 += x.sum(0)
        s2 += x.T @ x
    n = T * h * w
    mean = s1 / n
    cov = (s2 - n * torch.outer(mean, mean)) / max(n - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    pc1 = vecs[:, -1]
    score = torch.stack([(_unit_tokens(features[t:t + 1]).double() - mean) @ pc1 for t in range(T)])
    score = score.reshape(T, h, w)
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    # sign rule: border cells must score higher (background side) than the interior on average
    flipped = bool(score[:, border].mean() < score[:, ~border].mean()) if (~border).any() else False
    if flipped:
        score = -score
    lo, hi = score.min(), score.max()
    norm = (score - lo) / (hi - lo).clamp_min(1e-12)
    fg_cells = (norm < threshold).numpy()
    masks = cells_to_pixels(fg_cells, geometry)
    info = {"flipped": flipped, "fg_fraction": float(masks.mean()), "threshold": threshold}
    log.info("saliency masks: PCA sign %s, foreground %.1f%% of pixels",
             "flipped (border -> background)" if flipped else "kept", 100 * info["fg_fraction"])
    warn_mask_coverage("saliency", info["fg_fraction"])
    return masks, info


def motion_masks(fwd: np.ndarray, bwd: np.ndarray, threshold: float = 3.0, min_residual: float = 0.005,
                 min_area: float = 0.002, seed: int = 0, window: int | None = None) -> tuple[np.ndarray, dict]:
    """Consecutive flows fwd/bwd (T-1, h, w, 2) -> (T, h, w) bool moving-foreground masks + a report.

    ``window``: frame t is compared with frames t + window and t - window (clamped to the clip) through
    the flows chained over that span, so an object that moves slowly but steadily (a walking animal:
    under a pixel of residual per frame at the work size) accumulates a residual that per-pair noise
    does not. ``None`` (default): consecutive pairs first; while the foreground stays below
    ``GROW_BELOW_FG`` of the frame, the window doubles up to ``MOTION_WINDOW``. Longer windows are not
    the default because they also drag background next to the object along (DAVIS, 12 clips: mean
    precision vs the true masks 46 % at window 1, 31 % at window 4; docs/tracking.md; scripts/bench_motion_masks.py).
    """
    if window is not None:
        return _motion_masks(fwd, bwd, threshold, min_residual, min_area, seed, window)
    n = fwd.shape[0]
    win = 1
    while True:
        masks, info = _motion_masks(fwd, bwd, threshold, min_residual, min_area, seed, win, warn=False)
        if info["fg_fraction"] >= GROW_BELOW_FG or win >= min(MOTION_WINDOW, max(n, 1)):
            break
        log.info("motion masks: %.1f%% foreground with a %d-frame window; trying %d frames",
                 100 * info["fg_fraction"], win, 2 * win)
        win *= 2
    warn_mask_coverage("motion", info["fg_fraction"])
    return masks, info


def _motion_masks(fwd, bwd, threshold, min_residual, min_area, seed, window, warn=True):
    n, h, w = fwd.shape[:3]
    T = n + 1
    window = max(1, min(int(window), n)) if n else 1
    diag = float(np.hypot(h, w))
    min_px = min_residual * diag
    k = max(3, 2 * round(0.005 * diag) + 1)  # odd kernel ~1 % of the diagonal
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    masks = np.zeros((T, h, w), bool)
    fits = []
    raw_fg = 0.0
    # frame by frame (flows may be lazy per-frame readers): memory ~ window frames' flows, not the clip's
    for t in range(T):
        score = np.zeros((h, w), np.float32)
        count = 0
        # forward to t + window, backward to t - window; near the clip's ends one side is cut short and
        # carries less motion: only the longest available span(s) vote (window 1: both pairs inside)
        ends = {True: min(t + window, T - 1), False: max(t - window, 0)}
        longest = max(abs(e - t) for e in ends.values())
        for forward, end in ends.items():
            if end == t or abs(end - t) < longest:
                continue
            span = _chain(fwd if forward else bwd, t, end, forward)
            if span is not None:
                r, fit = _motion_residual(span, threshold, min_px, seed)
                score += r
                count += 1
                fits.append(fit)
        raw = score / max(count, 1) > 1.0
        raw_fg += float(raw.mean()) / T
        m = cv2.morphologyEx(raw.astype(np.uint8), cv2.MORPH_OPEN, kernel)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
        num, lab, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        keep = np.zeros(num, bool)
        keep[1:] = st[1:, cv2.CC_STAT_AREA] >= min_area * h * w
        masks[t] = keep[lab]
    info = {"fg_fraction": float(masks.mean()), "raw_fg_fraction": raw_fg, "threshold": threshold,
            "window": window, "min_residual_px": min_px, "min_area": min_area, "kernel": k,
            "model_failures": int(sum(f is None for f in fits)),
            "median_residual_px": float(np.median([f for f in fits if f is not None])) if any(
                f is not None for f in fits) else None}
    log.info("motion masks: foreground %.1f%% of pixels (%.1f%% before clean-up), median background "
             "residual %s px over %d frame(s)", 100 * info["fg_fraction"], 100 * info["raw_fg_fraction"],
             "n/a" if info["median_residual_px"] is None else f"{info['median_residual_px']:.2f}", window)
    if warn:
        warn_mask_coverage("motion", info["fg_fraction"])
    return masks, info


def warn_mask_coverage(source: str, fg_fraction: float) -> None:
    """One warning line when automatic masks are implausible: nearly empty (the moving object was not
    found: training then sees almost no foreground trajectories) or most of the frame."""
    if fg_fraction < MIN_AUTO_FG:
        log.warning("%s masks cover only %.1f%% of the frame -- the object was probably not found; pass your "
                    "own foreground masks (scripts/track.py --masks FOLDER)", source, 100 * fg_fraction)
    elif fg_fraction > 0.5:
        log.warning("%s masks cover %.0f%% of the frame -- they do not isolate the object; pass your own "
                    "foreground masks (scripts/track.py --masks FOLDER)", source, 100 * fg_fraction)


def _chain(flows, t: int, s: int, forward: bool) -> np.ndarray | None:
    """The displacement (h, w, 2) from frame t to frame s through consecutive flows (None if s == t).

    ``forward``: ``flows[i]`` maps i -> i+1 (s > t); else ``flows[i]`` maps i+1 -> i (s < t). Each step
    samples the next flow where the chain has arrived (bilinear, border-clamped), as chained flow
    trajectories do."""
    if s == t:
        return None
    steps = range(t, s) if forward else range(t - 1, s - 1, -1)
    disp = None
    for i in steps:
        f = np.asarray(flows[i], np.float32)
        if disp is None:
            disp = f.copy()
            h, w = f.shape[:2]
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            continue
        mx, my = xs + disp[..., 0], ys + disp[..., 1]
        disp += cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return disp


def _motion_residual(flow: np.ndarray, threshold: float, min_px: float, seed: int,
                     samples: int = 4000) -> tuple[np.ndarray, float | None]:
    """(h, w, 2) flow -> (residual / its threshold (h, w), median residual px or None if no fit)."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    step = max(1, int(np.sqrt(h * w / samples)))
    off = step // 2
    src = np.stack([xs[off::step, off::step], ys[off::step, off::step]], -1).reshape(-1, 2)
    dst = src + flow[off::step, off::step].reshape(-1, 2)
    ok = np.isfinite(dst).all(1)
    src, dst = src[ok], dst[ok]
    H = None
    if len(src) >= 8:
        cv2.setRNGSeed(seed)
        H, _ = cv2.findHomography(src, dst, cv2.RANSAC, max(min_px / 2, 1e-3))
    if H is None:  # no background model: nothing is marked as moving
        return np.zeros((h, w), np.float32), None
    den = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    mx = (H[0, 0] * xs + H[0, 1] * ys + H[0, 2]) / den - xs
    my = (H[1, 0] * xs + H[1, 1] * ys + H[1, 2]) / den - ys
    res = np.hypot(flow[..., 0] - mx, flow[..., 1] - my)
    res = np.where(np.isfinite(res), res, 0.0)
    med = float(np.median(res))
    return (res / max(threshold * med, min_px)).astype(np.float32), med


def _unit_tokens(features: torch.Tensor) -> torch.Tensor:
    """(T, C, h, w) -> (T*h*w, C) float32 L2-normalised tokens."""
    C = features.shape[1]
    return F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, C), dim=1)


def cells_to_pixels(cells: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(T, grid_h, grid_w) bool -> (T, input_h, input_w): each pixel takes its nearest cell."""
    g = geometry
    xs = np.rint(g.input_to_grid(np.stack([np.arange(g.input_w), np.zeros(g.input_w)], 1))[:, 0])
    ys = np.rint(g.input_to_grid(np.stack([np.zeros(g.input_h), np.arange(g.input_h)], 1))[:, 1])
    xi = np.clip(xs.astype(np.int64), 0, g.grid_w - 1)
    yi = np.clip(ys.astype(np.int64), 0, g.grid_h - 1)
    return cells[:, yi][:, :, xi]


def save_masks_png(folder, masks: np.ndarray) -> Path:
    """Write masks as ``00000.png`` ... (0/255, lossless), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        with atomic_path(folder / f"{i:05d}.png") as tmp:
            iio.imwrite(tmp, (np.asarray(m, bool) * 255).astype(np.uint8))
    return folder


def points_on_mask(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(M,) bool: pixel-centre points (x, y) of one (H, W) mask that fall on its foreground (nearest
    pixel); points outside the mask's frame are not on it."""
    p = np.rint(np.asarray(xy, np.float64)).astype(np.int64).reshape(-1, 2)
    h, w = mask.shape
    ok = (p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)
    out = np.zeros(len(p), bool)
    out[ok] = mask[p[ok, 1], p[ok, 0]]
    return out


def trajectory_foreground(traj, masks: np.ndarray) -> np.ndarray:
    """(N,) bool: the trajectory's first valid point lies on the foreground (spec section 2.5).

    ``traj``: a :class:`~tracker.preprocess.trajectory_store.TrajectoryStore` or a dense (N, T, 2) NaN array.
    """
    store = as_store(traj)
    if len(store) == 0:
        return np.zeros(0, bool)
    start = store.starts.astype(np.int64)
    xy = store.first_points()
    _, h, w = masks.shape
    xi = np.clip(np.rint(xy[:, 0]).astype(np.int64), 0, w - 1)
    yi = np.clip(np.rint(xy[:, 1]).astype(np.int64), 0, h - 1)
    return np.asarray(masks[start, yi, xi], bool)
