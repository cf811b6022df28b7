"""The synthetic TAP benchmark's ground truth: static points stay, occluded points sit behind the
occluder's rendered mask, tracks follow the rendered texture, and generation is reproducible."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from badja_eval import synthetic as syn
from badja_eval.tapvid import load_pickle


def _static_scene(T=6, H=48, W=64):
    """A static object (0) and an occluder (1) sweeping across it, on a static background."""
    rng = np.random.default_rng(0)
    tex = syn.make_texture(rng, 41, 41)
    static = syn.SceneObject(tex, 12.0, 0.0, 3, 0.0, np.tile([32.0, 24.0], (T, 1)), np.full(T, 0.3),
                             np.ones(T))
    xs = np.linspace(-10, 74, T)
    mover = syn.SceneObject(syn.make_texture(rng, 41, 41), 10.0, 0.0, 3, 0.0,
                            np.stack([xs, np.full(T, 24.0)], 1), np.linspace(0, 1, T), np.ones(T))
    bg = syn.make_texture(rng, H + 8, W + 8)
    return syn.Scene(H, W, bg, np.full((T, 2), 4.0), [static, mover])


def test_static_object_points_stay_fixed_and_get_occluded():
    scene = _static_scene()
    frames, labels = syn.render(scene)
    layers = np.array([0, 0, -1])
    canon = np.array([[2.0, 1.0], [-5.0, 4.0], [10.0, 40.0]])  # two on the object, one on the background
    xy, occ = syn.track_points(scene, layers, canon)
    assert np.ptp(xy, axis=1).max() < 1e-9  # nothing moves
    assert occ[0].any() and not occ[0].all()  # the occluder passes over
    for i, t in zip(*np.nonzero(occ)):
        x, y = np.rint(xy[i, t]).astype(int)
        assert labels[t, y, x] == 1  # hidden behind the occluder's rendered mask
    for i, t in zip(*np.nonzero(~occ)):
        x, y = np.rint(xy[i, t]).astype(int)
        assert labels[t, y, x] == layers[i]
    # a static, unoccluded point keeps its colour exactly
    vis0 = np.flatnonzero(~occ[0])
    x, y = np.rint(xy[0, 0]).astype(int)
    cols = frames[vis0, y, x]
    assert (cols == cols[0]).all()


@pytest.fixture(scope="module")
def hard():
    return syn.generate_video(3, "hard", num_frames=12, height=96, width=128, num_points=24, return_scene=True)


def test_occluded_points_lie_behind_a_front_mask(hard):
    xy, occ, lab, layers = hard["tracks_px"], hard["occluded"], hard["labels"], hard["layers"]
    H, W = lab.shape[1:]
    checked = 0
    for i, t in zip(*np.nonzero(occ)):
        x, y = np.rint(xy[i, t]).astype(int)
        if not (1 <= x < W - 1 and 1 <= y < H - 1):
            continue  # out of frame: occluded for that reason
        nb = lab[t, y - 1:y + 2, x - 1:x + 2]
        if (nb != nb[1, 1]).any():
            continue  # on a mask edge, rounding decides
        assert lab[t, y, x] > layers[i], (i, t)  # an object drawn in front of the point's own layer
        checked += 1
    assert checked > 5
    # and visible points sit on their own layer
    vis_ok = [lab[t, int(round(xy[i, t, 1])), int(round(xy[i, t, 0]))] == layers[i]
              for i, t in zip(*np.nonzero(~occ))]
    assert np.mean(vis_ok) > 0.97


def test_hard_level_objects_leave_the_frame_and_warp_is_invertible(hard):
    xy = hard["tracks_px"]
    out = (xy[..., 0] < -0.5) | (xy[..., 0] >= 127.5) | (xy[..., 1] < -0.5) | (xy[..., 1] >= 95.5)
    assert out.any() and (hard["occluded"][out]).all()
    scene = hard["scene"]
    assert len(scene.objects) >= 4 and any(o.warp_amp > 0 for o in scene.objects)
    obj = next(o for o in scene.objects if o.warp_amp > 0)
    q = np.random.default_rng(0).uniform(-10, 10, (50, 2))
    for t in (0, 5, 11):
        np.testing.assert_allclose(obj.to_canonical(obj.to_frame(q, t), t), q, atol=1e-9)
    # pickle layout: normalised corner convention
    np.testing.assert_allclose(hard["points"], (xy + 0.5) / [128, 96], atol=1e-6)


def test_levels_and_reproducibility(tmp_path):
    assert len(syn.DIFFICULTIES) >= 3
    kw = dict(difficulty="easy", num_videos=2, seed=5, num_frames=6, height=48, width=64, num_points=8)
    a = syn.generate_benchmark(tmp_path / "a.pkl", **kw)
    b = syn.generate_benchmark(tmp_path / "b.pkl", **kw)
    c = syn.generate_benchmark(tmp_path / "c.pkl", **dict(kw, seed=6))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    vids = load_pickle(a)  # readable by the TAP-Vid reader (safe mode)
    assert [v.name for v in vids] == ["easy_000", "easy_001"]
    assert vids[0].frames().shape == (6, 48, 64, 3) and vids[0].points.shape == (8, 6, 2)
    with open(a, "rb") as fh:
        assert set(pickle.load(fh)["easy_000"]) == {"video", "points", "occluded"}


def test_tracks_follow_the_rendered_texture():
    """Colour sampled at the GT track stays the same over frames (easy level: no noise or lighting);
    at the points' first positions held still (zero motion) it does not."""
    import cv2

    v = syn.generate_video(1, "easy", num_frames=8, height=96, width=128, num_points=24, return_scene=True)
    xy, occ, frames = v["tracks_px"], v["occluded"], v["video"].astype(np.float32)

    def err(static):
        diffs = []
        for i in range(len(xy)):
            vis = np.flatnonzero(~occ[i])
            if len(vis) < 2:
                continue
            cols = [cv2.getRectSubPix(frames[t], (1, 1), tuple(xy[i, vis[0] if static else t].astype(np.float32)))[0, 0]
                    for t in vis]
            diffs.append(np.abs(np.array(cols) - cols[0]).mean())
        return float(np.median(diffs))

    assert err(False) < 6.0
    assert err(False) * 3 < err(True)
