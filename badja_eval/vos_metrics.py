"""DAVIS region (J) and boundary (F) measures, as the DAVIS 2017 evaluation defines them.

Re-implemented from the definitions of ``davis2017/metrics.py``, ``davis2017/evaluation.py`` and
``davis2017/utils.py`` (github.com/davisvideochallenge/davis2017-evaluation; read, not copied). Where a
function follows a specific reference line, its docstring says which. All values are fractions in [0, 1]
here; the benchmark reports them x100.

* **J** (region similarity): ``|pred & gt| / |pred | gt|``, and **1 when both masks are empty** (ref
  ``db_eval_iou``: ``j = 1 if np.isclose(union, 0)``).
* **F** (boundary F-measure): 1-pixel boundary maps of both masks (ref ``_seg2bmap``), each dilated by a
  disk of radius ``ceil(0.008 * image diagonal)`` px (ref ``f_measure``: ``bound_pix = ceil(bound_th *
  norm(shape))`` for ``bound_th < 1``; ``cv2.dilate`` with ``skimage.morphology.disk``); precision = predicted
  boundary pixels within the dilated GT boundary / predicted boundary pixels, recall = GT boundary pixels
  within the dilated predicted boundary / GT boundary pixels; conventions when a boundary is empty:
  none predicted and some GT -> P 1, R 0; some predicted and no GT -> P 0, R 1; neither -> P 1, R 1;
  F = 2PR / (P + R), 0 when P + R = 0.
* **per object**: object ``k`` of a multi-object annotation is the mask ``labels == k`` (ref
  ``DAVIS.get_all_masks(separate_objects_masks=True)``: objects 1..max id of the first frame); void pixels
  (255) count as background, as they do in the reference (it sets them to 0 before separating objects, so
  its void masks are always empty).
* **frames**: the semi-supervised evaluation scores frames 1 .. T-2 -- the given first frame and the last
  frame are left out (ref ``evaluation.py``: ``all_gt_masks[:, 1:-1]``).
* **statistics** per object over those frames (ref ``db_statistics``): mean (NaN-aware), recall = share of
  frames with a value > 0.5, decay = mean of the first quarter-bin minus mean of the last (bins from
  ``round(linspace(1, n, 5) + 1e-10) - 1``).
* **means**: J-Mean / F-Mean = mean over **all objects of all sequences** (not over sequences), J&F-Mean =
  (J-Mean + F-Mean) / 2 (ref ``evaluation_method.py``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BOUND_TH = 0.008  # fraction of the image diagonal (ref f_measure's bound_th default)
VOID = 255


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index of two boolean masks; 1.0 when both are empty (ref ``db_eval_iou``)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} differ in size")
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & gt)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a boolean mask (ref ``_seg2bmap`` at the mask's own size): a pixel is on the boundary
    when it differs from its right, lower or lower-right neighbour; on the last row only the right neighbour
    counts, on the last column only the lower one, and the bottom-right pixel is never a boundary."""
    m = np.asarray(mask, bool)
    right = np.zeros_like(m)
    down = np.zeros_like(m)
    diag = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    down[:-1, :] = m[1:, :]
    diag[:-1, :-1] = m[1:, 1:]
    b = (m ^ right) | (m ^ down) | (m ^ diag)
    b[-1, :] = m[-1, :] ^ right[-1, :]
    b[:, -1] = m[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """uint8 disk of pixels with x^2 + y^2 <= radius^2, side 2*radius + 1 (what skimage's ``disk`` gives)."""
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return ((x * x + y * y) <= r * r).astype(np.uint8)


def bound_pixels(shape_hw: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """The dilation radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(*shape_hw)))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of two boolean masks (ref ``f_measure``, conventions in the module doc)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} differ in size")
    se = disk(bound_pixels(pred.shape, bound_th))
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g > 0:
        precision, recall = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    else:
        p_dil = cv2.dilate(pb.astype(np.uint8), se) > 0
        g_dil = cv2.dilate(gb.astype(np.uint8), se) > 0
        precision = int((pb & g_dil).sum()) / n_p
        recall = int((gb & p_dil).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def object_ids(first_labels: np.ndarray) -> list[int]:
    """Objects 1 .. max id of the first frame's annotation (void 255 ignored), as the reference counts them."""
    lab = np.asarray(first_labels)
    lab = np.where(lab == VOID, 0, lab)
    return list(range(1, int(lab.max()) + 1))


def frame_scores(pred: np.ndarray, gt: np.ndarray, ids: list[int], bound_th: float = BOUND_TH) -> dict:
    """{id: (J, F)} of one frame: object ``id`` = pixels labelled ``id`` (void 255 in ``gt`` is background)."""
    gt = np.where(np.asarray(gt) == VOID, 0, np.asarray(gt))
    pred = np.asarray(pred)
    return {k: (region_j(pred == k, gt == k), boundary_f(pred == k, gt == k, bound_th)) for k in ids}


def statistics(values) -> dict:
    """Mean, recall and decay of one object's per-frame values (ref ``db_statistics``)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": math.nan, "recall": math.nan, "decay": math.nan}
    mean = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    recall = float(np.mean(v[np.isfinite(v)] > 0.5)) if np.isfinite(v).any() else math.nan
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i]:ids[i + 1] + 1] for i in range(4)]
    first, last = bins[0][np.isfinite(bins[0])], bins[3][np.isfinite(bins[3])]
    decay = float(first.mean() - last.mean()) if first.size and last.size else math.nan
    return {"mean": mean, "recall": recall, "decay": decay}


def scored_frames(num_frames: int) -> range:
    """Frames the semi-supervised evaluation scores: 1 .. T-2 (ref: ``all_gt_masks[:, 1:-1]``)."""
    return range(1, max(num_frames - 1, 1))


def summarize(per_object: dict[str, dict[str, list[float]]]) -> dict:
    """Official means over every object: {"J": mean, "F": mean, "JF": (J + F) / 2} (fractions) from
    ``{object name: {"J": per-frame values, "F": per-frame values}}``."""
    if not per_object:
        return {"J": math.nan, "F": math.nan, "JF": math.nan}
    jm = float(np.mean([statistics(o["J"])["mean"] for o in per_object.values()]))
    fm = float(np.mean([statistics(o["F"])["mean"] for o in per_object.values()]))
    return {"J": jm, "F": fm, "JF": (jm + fm) / 2}


__all__ = ["BOUND_TH", "region_j", "boundary_map", "disk", "bound_pixels", "boundary_f", "object_ids",
           "frame_scores", "statistics", "scored_frames", "summarize"]
