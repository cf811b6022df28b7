"""Metric formulas on hand-computed cases (evaluation.md §1.3 and §3)."""
from __future__ import annotations

import math
import warnings

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


# ------------------------------------------------------------------------------- mutation-test survivors (issue 29)
def test_badja_uses_the_difference_to_a_nonzero_gt_and_the_query_frames():
    # gt (10, 20), pred (13, 24): 3-4-5 triangle, 5 px off; area 900 -> seg radius 0.2 * 30 = 6 px
    gt = np.tile([10.0, 20.0], (1, 4, 1))
    pred = np.tile([13.0, 24.0], (1, 4, 1))
    m = badja_metrics(pred, gt, np.ones((1, 4), bool), np.full(4, 900.0))
    assert (m["count"], m["delta_seg"], m["delta_3px"]) == (3, 100.0, 0.0)
    # queried at frame 2: only frame 3 counts, one entry (a single entry is a result, not "nothing")
    m = badja_metrics(pred, gt, np.ones((1, 4), bool), np.full(4, 900.0), query_frames=np.array([2]))
    assert (m["count"], m["delta_seg"], m["delta_3px"]) == (1, 100.0, 0.0)


def test_badja_nothing_to_evaluate_gives_exactly_the_nan_keys():
    gt = np.zeros((1, 3, 2))
    m = badja_metrics(gt, gt, np.zeros((1, 3), bool), np.ones(3))
    assert sorted(m) == ["count", "delta_3px", "delta_seg"] and m["count"] == 0
    assert math.isnan(m["delta_seg"]) and math.isnan(m["delta_3px"])
    m = badja_metrics(gt, gt, np.zeros((1, 3), bool), np.ones(3), pred_visible=np.ones((1, 3), bool))
    assert sorted(m) == ["count", "delta_3px", "delta_seg", "false_visible", "visible"]
    assert all(math.isnan(m[k]) for k in ("delta_seg", "delta_3px", "false_visible", "visible"))


def test_badja_flags_given_as_numbers_count_like_booleans():
    # visibility / predicted visibility read from a file as 0/1 ints or floats
    gt = np.zeros((1, 4, 2))
    pred = gt.copy()
    pred[0, 3, 0] = 5.0  # area 100 -> radius 2 px: frame 3 wrong
    areas = np.full(4, 100.0)
    m = badja_metrics(pred, gt, np.array([[1, 1, 0, 1]]), areas, pred_visible=np.array([[1.0, 1.0, 1.0, 1.0]]))
    # evaluated: frames 1 and 3; right at 1, wrong (and shown) at 3
    assert m["count"] == 2 and m["delta_seg"] == 50.0
    assert m["false_visible"] == 50.0 and m["visible"] == 100.0


def test_badja_seg_radius_is_float64_for_small_integer_areas():
    # a pixel count of 200 held as uint8: radius 0.2 * sqrt(200) = 2.8284271..; 2.8283 px is inside it
    # (float16 arithmetic would round the radius to 2.828125 and reject it)
    gt = np.zeros((1, 2, 2))
    pred = gt.copy()
    pred[0, 1, 0] = 2.8283
    m = badja_metrics(pred, gt, np.ones((1, 2), bool), np.array([200, 200], np.uint8))
    assert m["delta_seg"] == 100.0


def test_badja_shape_errors_say_what_is_wrong():
    gt = np.zeros((1, 4, 2))
    with pytest.raises(ValueError, match=r"must both be \(N, S, 2\)"):
        badja_metrics(np.zeros((1, 4, 3)), np.zeros((1, 4, 3)), np.ones((1, 4), bool), np.ones(4))
    with pytest.raises(ValueError, match=r"must both be \(N, S, 2\)"):
        badja_metrics(np.zeros((1, 5, 2)), gt, np.ones((1, 4), bool), np.ones(4))
    with pytest.raises(ValueError, match=r"mask_areas \(3,\) must be \(4,\)"):
        badja_metrics(gt, gt, np.ones((1, 4), bool), np.ones(3))
    with pytest.raises(ValueError, match=r"pred_visible \(1, 3\) must be \(1, 4\)"):
        badja_metrics(gt, gt, np.ones((1, 4), bool), np.ones(4), pred_visible=np.ones((1, 3), bool))


def test_tapvid_errors_say_what_is_wrong():
    q = np.zeros((1, 1, 3))
    with pytest.raises(ValueError, match="unknown query mode 'bogus'"):
        tapvid_eval_mask(q, 3, "bogus")
    occ = np.zeros((1, 1, 3), bool)
    tracks = np.zeros((1, 1, 3, 2))
    for args in ((occ[0], tracks[0], occ[0], tracks[0]),        # not (B, N, T)
                 (occ, tracks[..., :1], occ, tracks[..., :1]),  # tracks not (..., 2)
                 (occ, tracks, occ, tracks[:, :, :2]),          # pred tracks differ
                 (occ, tracks, occ[:, :, :2], tracks)):         # pred occlusion differs
        with pytest.raises(ValueError, match="shape mismatch: gt_occluded"):
            compute_tapvid_metrics(q, args[0], args[1], args[2], args[3], query_mode="first")


def test_tapvid_scores_each_video_on_its_own():
    """Two videos, one track each, 3 frames, query at 0 (frames 1, 2 evaluated).
    Video 0: visible, exact at both frames, predicted visible: OA 1, within 1, Jaccard 1.
    Video 1: visible at 1, occluded at 2; pred 5 px off at 1 and visible at both:
    OA 1/2 (frame 1 right, frame 2 wrong); within_1 0/1; Jaccard_1 = 0 / (1 + 2) = 0;
    within_8 1/1; Jaccard_8 = 1 / (1 + 1) (frame 2 shown while occluded)."""
    gt = np.zeros((2, 1, 3, 2))
    pred = gt.copy()
    pred[1, 0, 1, 0] = 5.0
    occ = np.zeros((2, 1, 3), bool)
    occ[1, 0, 2] = True
    q = np.zeros((2, 1, 3))
    m = compute_tapvid_metrics(q, occ, gt, np.zeros((2, 1, 3), bool), pred, query_mode="first",
                               thresholds=(1, 8))
    assert m["occlusion_accuracy"].tolist() == [1.0, 0.5]
    assert m["pts_within_1"].tolist() == [1.0, 0.0] and m["pts_within_8"].tolist() == [1.0, 1.0]
    assert m["jaccard_1"].tolist() == [1.0, 0.0] and m["jaccard_8"].tolist() == [1.0, 0.5]
    assert m["average_jaccard"].tolist() == [1.0, 0.25]


def test_tapvid_occlusion_flags_as_floats_and_nothing_visible_is_nan_without_warnings():
    args = list(_one_track([0, 0, 0], gt_occ=[0, 1, 1], pred_occ=[0, 1, 1]))
    args[1], args[3] = args[1].astype(np.float64), args[3].astype(np.float64)  # 0./1. read from a file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_tapvid_metrics(*args, query_mode="first")
    # frames 1, 2 evaluated, both occluded and predicted occluded: OA 1, no visible point -> NaN, Jaccard 0/0
    assert float(m["occlusion_accuracy"][0]) == 1.0
    assert math.isnan(float(m["pts_within_1"][0])) and math.isnan(float(m["jaccard_1"][0]))


def test_tapvid_threshold_names():
    m = compute_tapvid_metrics(*_one_track([0, 0.2, 0.7]), query_mode="first", thresholds=(0.5, 2.0))
    assert sorted(k for k in m if k.startswith("pts_within_")) == ["pts_within_0.5", "pts_within_2"]
    assert float(m["pts_within_0.5"][0]) == 0.5 and float(m["pts_within_2"][0]) == 1.0


def test_mean_over_videos_default_keys_missing_counts_and_all_nan():
    rows = [{"a": 1.0, "count": 3, "n_frames": 10, "b": math.nan}, {"a": 3.0, "n_frames": 20, "b": math.nan}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mean_over_videos(rows)
    # keys from the first row, without "count" and the n_* counters; a row without "count" adds 0
    assert sorted(m) == ["a", "b", "count", "n_videos"]
    assert m["a"] == 2.0 and math.isnan(m["b"]) and m["count"] == 3 and m["n_videos"] == 2
    assert mean_over_videos([{"a": 4.0}]) == {"a": 4.0, "n_videos": 1}
    assert mean_over_videos([]) == {}
