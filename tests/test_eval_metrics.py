"""Metric formulas on hand-computed cases (evaluation.md §1.3 and §3)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from badja_eval.metrics import (badja_eval_mask, badja_metrics, compute_tapvid_metrics, mean_over_videos,
                                tapvid_eval_mask)


# ------------------------------------------------------------------------------- TAP-Vid fixture §1.3
def _fixture():
    T = 6
    t = np.arange(T)
    gt = np.zeros((1, 3, T, 2))
    gt[0, 0, :, 0], gt[0, 0, :, 1] = 50 + 10 * t, 100
    gt[0, 1, :, 0], gt[0, 1, :, 1] = 120, 60 + 5 * t
    gt[0, 2] = 200
    occ = np.zeros((1, 3, T), bool)
    occ[0, 1, 3:5] = True
    occ[0, 2, 0] = True
    q = np.array([[[0, 100, 50], [0, 60, 120], [1, 200, 200]]], float)
    pred = gt.copy()
    pred[0, 0, :, 0] += [0, 0.5, 1.5, 3, 6, 12]
    pred[0, 1, :, 1] += [0, 1, 1, 20, 20, 1]
    pocc = occ.copy()
    pocc[0, 1, 3] = False  # predicted visible while GT occluded
    pocc[0, 0, 5] = True  # predicted occluded while GT visible
    return q, occ, gt, pocc, pred


@pytest.mark.parametrize("mode,oa", [("first", 0.857143), ("strided", 0.866667)])
def test_tapvid_fixture_matches_reference(mode, oa):
    m = compute_tapvid_metrics(*_fixture(), query_mode=mode)
    expect = {"occlusion_accuracy": oa, "pts_within_1": 0.416667, "pts_within_2": 0.75,
              "pts_within_4": 0.833333, "pts_within_8": 0.916667, "pts_within_16": 1.0,
              "jaccard_1": 0.263158, "jaccard_2": 0.6, "jaccard_4": 0.714286, "jaccard_8": 0.846154,
              "jaccard_16": 0.846154, "average_jaccard": 0.65395, "average_pts_within_thresh": 0.783333}
    for k, v in expect.items():
        assert m[k].shape == (1,)
        assert round(float(m[k][0]), 6) == pytest.approx(v, abs=1e-6), k


def test_eval_frames_first_is_strictly_after_and_strided_excludes_only_query():
    q = np.array([[[2, 0, 0]]], float)
    assert tapvid_eval_mask(q, 5, "first")[0, 0].tolist() == [False, False, False, True, True]
    assert tapvid_eval_mask(q, 5, "strided")[0, 0].tolist() == [True, True, False, True, True]
    # query time is rounded
    assert tapvid_eval_mask(np.array([[[1.6, 0, 0]]]), 4, "first")[0, 0].tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        tapvid_eval_mask(q, 5, "bogus")


def _one_track(err, gt_occ=None, pred_occ=None, tq=0):
    T = len(err)
    gt = np.zeros((1, 1, T, 2))
    pred = gt.copy()
    pred[0, 0, :, 0] = err
    g = np.zeros((1, 1, T), bool) if gt_occ is None else np.array(gt_occ, bool)[None, None]
    p = np.zeros((1, 1, T), bool) if pred_occ is None else np.array(pred_occ, bool)[None, None]
    q = np.array([[[tq, 0, 0]]], float)
    return q, g, gt, p, pred


def test_thresholds_are_strict_at_every_delta():
    for d in (1, 2, 4, 8, 16):
        m = compute_tapvid_metrics(*_one_track([0, d, d - 1e-6, d + 1e-6]), query_mode="first")
        # frames 1..3 evaluated: exactly d fails, just under passes, just over fails
        assert float(m[f"pts_within_{d}"][0]) == pytest.approx(1 / 3)


def test_frames_before_query_count_only_in_strided():
    # query at frame 2; frame 0 is badly wrong, frames 1, 3 exact
    args = _one_track([100, 0, 0, 0], tq=2)
    first = compute_tapvid_metrics(*args, query_mode="first")
    strided = compute_tapvid_metrics(*args, query_mode="strided")
    assert float(first["pts_within_1"][0]) == 1.0  # only frame 3
    assert float(strided["pts_within_1"][0]) == pytest.approx(2 / 3)  # frames 0, 1, 3


def test_occlusion_accuracy_and_jaccard_with_mixed_predictions():
    # frames 1..4 evaluated (first mode, query 0). GT visible: 1, 2; occluded: 3, 4.
    # pred: f1 visible+close (TP), f2 occluded (miss), f3 visible (FP), f4 occluded (correct).
    args = _one_track([0, 0.1, 0.1, 0.1, 0.1], gt_occ=[0, 0, 0, 1, 1], pred_occ=[0, 0, 1, 0, 1])
    m = compute_tapvid_metrics(*args, query_mode="first")
    assert float(m["occlusion_accuracy"][0]) == pytest.approx(2 / 4)  # f1, f4 right
    assert float(m["pts_within_1"][0]) == 1.0  # predicted occlusion ignored
    assert float(m["jaccard_1"][0]) == pytest.approx(1 / (2 + 1))  # TP / (visible + FP)
    # a visible-but-far prediction is both a miss and a false positive
    args = _one_track([0, 5, 0.1], pred_occ=[0, 0, 0])
    m = compute_tapvid_metrics(*args, query_mode="first")
    assert float(m["jaccard_1"][0]) == pytest.approx(1 / (2 + 1))
    assert float(m["jaccard_8"][0]) == 1.0


def test_videos_are_averaged_not_pooled():
    a = {"x": 100.0, "count": 1}
    b = {"x": 0.0, "count": 99}
    m = mean_over_videos([a, b], ["x"])
    assert m["x"] == 50.0 and m["count"] == 100 and m["n_videos"] == 2
    # a video with nothing to evaluate is left out of that mean
    assert mean_over_videos([a, {"x": math.nan, "count": 0}], ["x"])["x"] == 100.0


# ------------------------------------------------------------------------------- BADJA §3
def test_badja_thresholds_strict():
    # area 2500 -> seg threshold 0.2*50 = 10 px; 3px threshold 3
    S = 6
    gt = np.zeros((1, S, 2))
    pred = gt.copy()
    pred[0, :, 0] = [0, 3.0, 2.999, 10.0, 9.999, 10.001]
    vis = np.ones((1, S), bool)
    m = badja_metrics(pred, gt, vis, np.full(S, 2500.0))
    # evaluated t=1..5: 3px passes only t=2; seg passes t=1,2,4
    assert m["count"] == 5
    assert m["delta_3px"] == pytest.approx(100 * 1 / 5)
    assert m["delta_seg"] == pytest.approx(100 * 3 / 5)


def test_badja_frame_selection():
    vis = np.array([[True, True, False, True],     # t=0 never counts; t=2 invisible
                    [False, False, True, True]])
    assert badja_eval_mask(vis).tolist() == [[False, True, False, True], [False, False, True, True]]
    # first-visible queries: joint 1 queried at t=2, so only t=3 counts for it
    assert badja_eval_mask(vis, np.array([0, 2])).tolist() == [[False, True, False, True],
                                                               [False, False, False, True]]
    # the seg threshold uses the area of frame t, not of frame 0
    gt = np.zeros((1, 3, 2))
    pred = np.full((1, 3, 2), [5.0, 0.0])
    m = badja_metrics(pred, gt, np.ones((1, 3), bool), np.array([1e6, 100.0, 2500.0]))
    assert m["delta_seg"] == 50.0  # t=1: 5 < 2 fails; t=2: 5 < 10 passes
    assert badja_metrics(pred, gt, np.zeros((1, 3), bool), np.ones(3))["count"] == 0


def test_badja_false_visible_counts_wrong_points_shown_as_visible():
    """2 joints x 4 frames, every entry after frame 0 evaluated (6 entries), mask area 100 -> δseg
    radius 0.2 * 10 = 2 px. Joint 0 is right at frames 1, 2 and 5 px off at 3; joint 1 is 5 px off at 1
    and right at 2, 3. Predicted visible: joint 0 all; joint 1 only frame 2.
    Wrong and visible: joint 0 frame 3 -> 1 of 6 = 16.67 %; visible 4 of 6 = 66.67 %; δseg 4/6."""
    gt = np.zeros((2, 4, 2))
    pred = gt.copy()
    pred[0, 3, 0] = 5.0
    pred[1, 1, 1] = 5.0
    vis_gt = np.ones((2, 4), bool)
    pv = np.array([[True] * 4, [True, False, True, False]])
    m = badja_metrics(pred, gt, vis_gt, np.full(4, 100.0), pred_visible=pv)
    assert m["count"] == 6
    assert m["delta_seg"] == pytest.approx(100 * 4 / 6)
    assert m["false_visible"] == pytest.approx(100 / 6) and m["visible"] == pytest.approx(400 / 6)
    assert "false_visible" not in badja_metrics(pred, gt, vis_gt, np.full(4, 100.0))  # protocol keys only
    with pytest.raises(ValueError):
        badja_metrics(pred, gt, vis_gt, np.full(4, 100.0), pred_visible=pv[:, :3])
