"""Baselines on generated clips with known motion, and the BADJA quick-check scorer on real data."""
import sys
from pathlib import Path

import numpy as np
import pytest

from cosettle.backends.registry import load_backend
from cosettle.errors import UserError
from tracker import build_tracker
from tracker.baselines import FlowTracker


def texture(h, w, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 1.5)


def translating_clip(T=6, h=64, w=96, dx=1.5, dy=0.5):
    import cv2

    img = texture(h, w)
    return np.stack([cv2.warpAffine(img, np.float32([[1, 0, dx * t], [0, 1, dy * t]]), (w, h),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for t in range(T)])


def test_static_tracker():
    clip = np.zeros((4, 10, 12, 3), np.uint8)
    tr = build_tracker("static").fit(clip)
    res = tr.track(np.array([[0, 3.0, 4.0], [2, 5.5, 1.0]]))
    assert tr.name == "static"
    assert res.tracks.shape == (2, 4, 2)
    np.testing.assert_array_equal(res.tracks[1], np.tile([5.5, 1.0], (4, 1)))
    assert res.visible.all() and (res.confidence == 1).all()


def test_flow_tracker_follows_known_motion_both_directions():
    T, dx, dy = 6, 1.5, 0.5
    clip = translating_clip(T, dx=dx, dy=dy)
    tr = build_tracker("flow").fit(clip)
    assert tr.name == "flow"
    q = np.array([[0, 40.0, 30.0], [5, 50.0, 32.0], [2, 45.0, 25.0]])
    res = tr.track(q)
    t = np.arange(T)
    for i, (tq, x, y) in enumerate(q):
        want = np.stack([x + dx * (t - tq), y + dy * (t - tq)], 1)
        err = np.linalg.norm(res.tracks[i] - want, axis=1)
        assert err.max() < 0.5, (i, err)
        assert res.visible[i].all()
    np.testing.assert_array_equal(res.tracks[:, :, 0][np.arange(3), q[:, 0].astype(int)], q[:, 1])


def test_flow_tracker_exact_with_given_flows_and_occlusion():
    T, h, w = 5, 20, 30
    fwd = np.zeros((T - 1, h, w, 2), np.float32)
    fwd[..., 0], fwd[..., 1] = 2.0, 1.0
    bwd = -fwd.copy()
    bwd[2, :, 20:] = 0.0  # frame 3 -> 2 disagrees on the right part: fb check fails there
    clip = np.zeros((T, h, w, 3), np.uint8)
    tr = FlowTracker(flows=(fwd, bwd)).fit(clip)
    res = tr.track(np.array([[0, 14.0, 3.0], [4, 12.0, 10.0]]))
    np.testing.assert_allclose(res.tracks[0], [[14 + 2 * t, 3 + t] for t in range(T)])
    np.testing.assert_allclose(res.tracks[1], [[12 - 2 * (4 - t), 10 - (4 - t)] for t in range(T)])
    # point 0 reaches x = 20 at frame 3 where the backward flow is wrong -> occluded there only,
    # but its position estimate keeps propagating
    assert res.visible[0].tolist() == [True, True, True, False, True]
    assert res.confidence[0, 3] < 0.5 < res.confidence[0, 2]
    # leaving the image -> occluded
    res2 = tr.track(np.array([[0, 25.0, 3.0]]))
    assert res2.visible[0].tolist() == [True, True, True, False, False]


def test_feature_tracker_on_integer_shift():
    T, step = 4, 4
    clip = translating_clip(T, h=64, w=96, dx=step, dy=0)
    backend = load_backend("dsift", patch_size=8, stride=4)
    tr = build_tracker("features", backend=backend).fit(clip)
    assert tr.name == "features"
    q = np.array([[0, 40.0, 30.0], [3, 60.0, 35.0]])
    res = tr.track(q)
    t = np.arange(T)
    for i, (tq, x, y) in enumerate(q):
        want = np.stack([x + step * (t - tq), np.full(T, y)], 1)
        err = np.linalg.norm(res.tracks[i] - want, axis=1)
        assert err.max() < 2.0, (i, err)
    assert (res.confidence > 0.8).all() and res.visible.all()
    assert (res.confidence <= 1).all()


def test_bad_queries_and_order_of_calls():
    clip = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(UserError, match="fit"):
        build_tracker("static").track(np.zeros((1, 3)))
    tr = build_tracker("static").fit(clip)
    with pytest.raises(UserError, match="0..2"):
        tr.track(np.array([[3, 1.0, 1.0]]))
    with pytest.raises(UserError, match=r"\(N, 3\)"):
        tr.track(np.zeros((2, 2)))
    with pytest.raises(UserError, match="needs a backend"):
        build_tracker("features")
    with pytest.raises(UserError, match="do not match"):
        FlowTracker(flows=(np.zeros((1, 8, 8, 2)), np.zeros((1, 8, 8, 2)))).fit(clip)


def test_badja_quick_check_scorer_zero_motion(shared_dir, capsys):
    """The spec's calibration through the quick-check script (which scores with badja_eval):
    the static tracker on horsejump-high = delta_seg 7.28 / delta_3px 0 over 151 entries."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from check_flow_badja import main

    assert main(["--tracker", "static", "--shared", str(shared_dir / "data")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["entries"] == 151 and out["frames"] == 50
    assert round(out["delta_seg"], 2) == 7.28 and out["delta_3px"] == 0.0
