"""Optical flow helpers: DIS on known shifts, bilinear sampling, consistency maps, RAFT/unknown errors."""
import numpy as np
import pytest

from cosettle.errors import UserError
from tracker.preprocess.flow import (DISFlow, consecutive_flows, fb_consistency, make_flow_estimator, sample_flow,
                          step_points)


def texture(h=64, w=96, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def shifted(img, dx, dy):
    import cv2

    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


@pytest.mark.parametrize("dx,dy", [(3, -2), (1.5, 0.5)])
def test_dis_recovers_translation(dx, dy):
    img = texture()
    flow = DISFlow("medium", finest_scale=0)(img, shifted(img, dx, dy))
    inner = flow[12:-12, 12:-12].reshape(-1, 2)
    med = np.median(inner, axis=0)
    assert abs(med[0] - dx) < 0.25 and abs(med[1] - dy) < 0.25, med


def test_sample_flow_is_bilinear():
    h, w = 6, 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack([0.5 * xx, 2.0 * yy + xx], axis=-1)  # linear field: bilinear sampling is exact
    pts = np.array([[2.25, 3.5], [0.0, 0.0], [7.0, 5.0]], np.float32)
    got = sample_flow(flow, pts)
    want = np.array([[1.125, 9.25], [0.0, 0.0], [3.5, 17.0]])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # outside: clamped to the border value
    np.testing.assert_allclose(sample_flow(flow, np.array([[-3.0, 10.0]], np.float32)), [[0.0, 10.0]])


def test_consistency_and_coverage_for_a_constant_shift():
    h, w = 5, 7
    fwd = np.zeros((h, w, 2), np.float32)
    fwd[..., 0] = 2.0
    bwd = -fwd
    err, covered = fb_consistency(fwd, bwd)
    # x + B = x - 2; F there = +2 -> back at x: zero error everywhere (border clamping keeps F = 2)
    assert np.abs(err).max() < 1e-6
    # frame i+1 columns 0 and 1 receive no pixel from frame i; every other column does
    assert not covered[:, :2].any() and covered[:, 2:].all()


def test_step_points_reports_fb_error_and_bounds():
    fwd = np.zeros((10, 10, 2), np.float32)
    fwd[..., 0] = 3.0
    bwd = np.zeros_like(fwd)  # inconsistent: backward says "no motion"
    xy = np.array([[1.0, 1.0], [8.0, 2.0]], np.float32)
    c1, err, ins = step_points(xy, fwd, bwd)
    np.testing.assert_allclose(c1, [[4, 1], [11, 2]])
    np.testing.assert_allclose(err, [3, 3])
    assert ins.tolist() == [True, False]


def test_consecutive_flows_counts_calls():
    img = texture(32, 48)
    frames = np.stack([shifted(img, k, 0) for k in range(4)])
    est = make_flow_estimator("dis", "ultrafast")
    fwd, bwd = consecutive_flows(frames, est)
    assert fwd.shape == (3, 32, 48, 2) and bwd.shape == fwd.shape
    assert est.calls == 6
    assert abs(np.median(fwd[:, 8:-8, 8:-8, 0]) - 1.0) < 0.3
    assert abs(np.median(bwd[:, 8:-8, 8:-8, 0]) + 1.0) < 0.3


def test_bad_flow_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth|nope.pth"):
        make_flow_estimator("raft", raft_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="unknown flow method"):
        make_flow_estimator("farneback")
    with pytest.raises(UserError, match="DIS preset"):
        make_flow_estimator("dis", dis_preset="slow")
