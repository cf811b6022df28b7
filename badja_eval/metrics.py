"""BADJA (δseg, δ3px) and TAP-Vid (OA, pts_within_δ, δavg, Jaccard_δ, AJ) metrics.

Re-implemented from the formulas in ``../shared/reference/evaluation.md`` (§1.3 and §3); no code is
taken from tapnet, PIPs, CoTracker or DINO-Tracker. Both benchmarks score **per video** and report the
simple mean of the per-video values (entries are never pooled across videos).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)
QUERY_MODES_TAPVID = ("first", "strided")


# ----------------------------------------------------------------------------------------------- BADJA
def badja_eval_mask(visible: np.ndarray, query_frames: np.ndarray | None = None) -> np.ndarray:
    """Entries that count: joint visible at clip frame t and t strictly after its query frame.

    With the default protocol every joint is queried at clip frame 0, so this is "every t >= 1 where the
    joint is visible" (PIPs after its frame-0 fix, CoTracker v1, DINO-Tracker). With first-visible
    queries the query frame itself (trivially correct) and anything before it are excluded.
    """
    visible = np.asarray(visible, dtype=bool)
    n, s = visible.shape
    qf = np.zeros(n, dtype=np.int64) if query_frames is None else np.rint(query_frames).astype(np.int64)
    return visible & (np.arange(s)[None, :] > qf[:, None])


def badja_metrics(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, mask_areas: np.ndarray,
                  query_frames: np.ndarray | None = None, px_threshold: float = 3.0,
                  seg_factor: float = 0.2, pred_visible: np.ndarray | None = None) -> dict:
    """One video. ``pred``/``gt``: (N, S, 2) x,y at the evaluation resolution (854x480 in the project
    setting); ``visible``: (N, S) GT visibility (False on unannotated frames); ``mask_areas``: (S,)
    foreground pixel counts at the evaluation resolution.

    δseg: ‖p̂ − p‖ < 0.2·√A_t ; δ3px: ‖p̂ − p‖ < 3 px (both strict). Occlusion predictions are ignored
    by both (the BADJA protocol). With ``pred_visible`` (N, S) two more, not in the protocol, over the
    same entries: ``false_visible`` = predicted visible and outside the δseg radius (a wrong point shown
    as right; lower is better) and ``visible`` = predicted visible (so hiding every point is seen).
    Returns percentages (×100) and the number of evaluated entries.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    areas = np.asarray(mask_areas, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, S, 2)")
    if areas.shape != (gt.shape[1],):
        raise ValueError(f"mask_areas {areas.shape} must be ({gt.shape[1]},)")
    ev = badja_eval_mask(visible, query_frames)
    dist = np.linalg.norm(pred - gt, axis=-1)
    seg_ok = dist < seg_factor * np.sqrt(areas)[None, :]
    px_ok = dist < px_threshold
    count = int(ev.sum())
    if count == 0:
        extra = {} if pred_visible is None else {"false_visible": math.nan, "visible": math.nan}
        return {"delta_seg": math.nan, "delta_3px": math.nan, "count": 0, **extra}
    out = {"delta_seg": 100.0 * float(seg_ok[ev].mean()), "delta_3px": 100.0 * float(px_ok[ev].mean()),
           "count": count}
    if pred_visible is not None:
        pv = np.asarray(pred_visible, bool)
        if pv.shape != ev.shape:
            raise ValueError(f"pred_visible {pv.shape} must be {ev.shape}")
        out["false_visible"] = 100.0 * float((pv & ~seg_ok)[ev].mean())
        out["visible"] = 100.0 * float(pv[ev].mean())
    return out


# ----------------------------------------------------------------------------------------------- TAP-Vid
def tapvid_eval_mask(query_points: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """E[b, q, t]: which frames count for each query. ``first``: t > t_q (the fixed rule, tapnet #34);
    ``strided``: t != t_q. ``query_points``: (B, N, 3) [t, y, x]; t_q = round(t)."""
    if query_mode not in QUERY_MODES_TAPVID:
        raise ValueError(f"unknown query mode {query_mode!r}; use one of {QUERY_MODES_TAPVID}")
    tq = np.rint(np.asarray(query_points)[..., 0]).astype(np.int64)
    frames = np.arange(num_frames)
    if query_mode == "first":
        return frames[None, None, :] > tq[..., None]
    return frames[None, None, :] != tq[..., None]


def compute_tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                           pred_occluded: np.ndarray, pred_tracks: np.ndarray, query_mode: str,
                           thresholds: Sequence[float] = TAPVID_THRESHOLDS) -> dict[str, np.ndarray]:
    """Per-video TAP-Vid metrics (fractions, not ×100), each an array of shape (B,).

    Shapes: ``query_points`` (B,N,3) [t,y,x]; ``gt_occluded``/``pred_occluded`` (B,N,T) bool, True =
    occluded; ``gt_tracks``/``pred_tracks`` (B,N,T,2) (x,y) raster pixels at 256x256.
    Keys: occlusion_accuracy, pts_within_{δ}, jaccard_{δ}, average_pts_within_thresh, average_jaccard.
    """
    gt_occ = np.asarray(gt_occluded, dtype=bool)
    pred_occ = np.asarray(pred_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    if gt_occ.ndim != 3 or gt_tracks.shape != gt_occ.shape + (2,) or pred_tracks.shape != gt_tracks.shape \
            or pred_occ.shape != gt_occ.shape:
        raise ValueError(f"shape mismatch: gt_occluded {gt_occ.shape}, gt_tracks {gt_tracks.shape}, "
                         f"pred_occluded {pred_occ.shape}, pred_tracks {pred_tracks.shape}")
    E = tapvid_eval_mask(query_points, gt_occ.shape[-1], query_mode)
    V = ~gt_occ
    P = ~pred_occ
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["occlusion_accuracy"] = np.sum(E & (P == V), axis=(1, 2)) / np.sum(E, axis=(1, 2))
        d2 = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)
        n_vis = np.sum(E & V, axis=(1, 2))
        within, jac = [], []
        for thr in thresholds:
            W = d2 < thr * thr
            pw = np.sum(E & V & W, axis=(1, 2)) / n_vis
            tp = np.sum(E & V & P & W, axis=(1, 2))
            fp = np.sum(E & P & (~V | ~W), axis=(1, 2))
            jc = tp / (n_vis + fp)
            out[f"pts_within_{_tag(thr)}"] = pw
            out[f"jaccard_{_tag(thr)}"] = jc
            within.append(pw)
            jac.append(jc)
        out["average_pts_within_thresh"] = np.mean(within, axis=0)
        out["average_jaccard"] = np.mean(jac, axis=0)
    return out


def _tag(thr: float) -> str:
    return str(int(thr)) if float(thr).is_integer() else str(thr)


# ----------------------------------------------------------------------------------------------- means
def mean_over_videos(per_video: Iterable[dict], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Simple mean of per-video values. A video with nothing to evaluate (NaN) is left out of that
    metric's mean and a count says how many videos entered it (``n_videos``)."""
    rows = list(per_video)
    if not rows:
        return {}
    keys = list(keys or [k for k in rows[0] if k != "count" and not k.startswith("n_")])
    out: dict[str, float] = {}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if k in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if len(vals) else math.nan
    if "count" in rows[0]:
        out["count"] = int(sum(int(r.get("count", 0)) for r in rows))
    out["n_videos"] = len(rows)
    return out
