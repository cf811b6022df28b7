"""Flow-guided fusion (tracker ``dino-flow``): hand-built flows, head predictions and textures with known
answers for each branch of the evidence rule, verification of re-detections, and the tracker end to end
on a translating clip."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cosettle.backends.registry import load_backend
from cosettle.io.tracks import TrackResult
from tests._tracker_synth import gt_track, texture, translating_clip
from tracker import build_tracker
from tracker.config import preset
from tracker.fusion import FusionStats, TemplateVerifier, fuse_step, fuse_tracks

H, W = 20, 30


def _const_flow(dx, dy, h=H, w=W):
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def _step(p, fwd, bwd, d, dvis, run=0, left_fg=None, drift_frames=1):
    return fuse_step(np.array(p, np.float32), fwd, bwd, np.array(d, np.float32), np.array(dvis),
                     np.full(len(p), run), snap_px=3.0, fb_px=1.5, drift_frames=drift_frames, left_fg=left_fg)


def test_consistent_flow_is_followed_whatever_the_head_says_without_evidence():
    fwd, bwd = _const_flow(2, 1), _const_flow(-2, -1)
    # head 1 px from the flow candidate (12, 11), head 8.9 px away and seeing, head not seeing
    dec = _step([[10, 10]] * 3, fwd, bwd, [[13, 11], [20, 15], [20, 15]], [True, True, False])
    assert dec.flow.tolist() == [[12.0, 11.0]] * 3 and dec.consistent.all() and dec.fb_err.tolist() == [0, 0, 0]
    assert dec.follow.all() and not dec.candidate.any()  # disagreement alone is no evidence
    assert dec.run.tolist() == [0, 0, 0]  # no foreground known: nothing counts towards drift


def test_drift_is_a_candidate_only_off_the_foreground_and_after_drift_frames():
    fwd, bwd = _const_flow(2, 1), _const_flow(-2, -1)
    off = lambda f: np.ones(len(f), bool)  # noqa: E731 -- flow left the foreground
    on = lambda f: np.zeros(len(f), bool)  # noqa: E731
    dec = _step([[10, 10]], fwd, bwd, [[20, 15]], [True], left_fg=off)
    assert dec.candidate.all() and dec.drift.all() and not dec.follow.any() and dec.run.tolist() == [1]
    assert not _step([[10, 10]], fwd, bwd, [[20, 15]], [True], left_fg=on).candidate.any()
    assert not _step([[10, 10]], fwd, bwd, [[13, 11]], [True], left_fg=off).candidate.any()  # head agrees
    # three frames in a row required: run 1 -> 2 is not enough, 2 -> 3 is
    assert not _step([[10, 10]], fwd, bwd, [[20, 15]], [True], run=1, left_fg=off, drift_frames=3).candidate.any()
    assert _step([[10, 10]], fwd, bwd, [[20, 15]], [True], run=2, left_fg=off, drift_frames=3).candidate.all()


def test_broken_flow_branches():
    fwd, bwd = _const_flow(2, 0), _const_flow(0, 0)  # back-projection misses by 2 px > 1.5
    # head agrees (0.5 px) / head far and seeing / head blind
    dec = _step([[10, 10]] * 3, fwd, bwd, [[12.5, 10], [20, 10], [20, 10]], [True, True, False])
    assert not dec.consistent.any() and dec.fb_err.tolist() == pytest.approx([2.0] * 3)
    assert dec.follow.tolist() == [True, False, False]      # agreeing head: flow kept
    assert dec.candidate.tolist() == [False, True, False]   # far seeing head: re-detection candidate
    # leaving the frame breaks flow even when it is consistent
    out = _step([[28.5, 10]], _const_flow(2, 0), _const_flow(-2, 0), [[28, 10]], [True])
    assert not out.consistent.any() and not out.follow.any() and out.candidate.all()


def _textured_clip(T=6, h=80, w=100, seed=4):
    """Frame k = frame 0 shifted by (+k, 0) px: the scene point (x, y) of frame 0 is at (x + k, y)."""
    f0 = texture(h, w, seed=seed)
    return np.stack([np.roll(f0, shift=k, axis=1) for k in range(T)])


def test_redetection_accepted_only_when_verified_and_a_failed_one_is_not_visible():
    """Flow breaks at step 2 -> 3 for both queries. The head's candidate of query 0 is where its
    texture is (accepted, pixel-exact); query 1's is on other texture (rejected): it is not visible at
    frame 3 and stays not visible while it follows flow again (frames 4, 5)."""
    T = 6
    frames = _textured_clip(T)
    q = np.array([[0, 40.0, 40.0], [0, 55.0, 30.0]], np.float32)
    gt = np.stack([np.stack([q[i, 1] + np.arange(T), np.full(T, q[i, 2])], 1) for i in range(2)])
    good, bad = _const_flow(1, 0, 80, 100), _const_flow(-1, 0, 80, 100)

    def flow_pair(t):
        return (good, _const_flow(3, 0, 80, 100)) if t == 2 else (good, bad)  # 2 -> 3: fb error 4 px

    head = gt.copy()
    head[0, 3] = gt[0, 3] + (5, 3)   # flow broke; the head sees query 0 5.8 px off its true position
    head[1, 3] = (80.0, 60.0)        # query 1: the head points at other texture (best correlation 0.36)
    vis = np.ones((2, T), bool)
    dino = TrackResult(head.astype(np.float32), vis, vis.astype(np.float32), q)
    st = FusionStats()
    tracks, visible, conf = fuse_tracks(dino, flow_pair, T, snap_px=3.0, fb_px=1.5,
                                        verifier=TemplateVerifier(frames, q, half=8, search_px=8),
                                        verify_ncc=0.5, stats=st)
    np.testing.assert_allclose(tracks[0], gt[0], atol=1e-4)   # verified: moved onto the true position
    assert visible[0].all() and conf[0, 3] > 0.99
    assert visible[1].tolist() == [True, True, True, False, False, False]
    assert (conf[1, 3:] == 0).all()
    # the lost point kept following flow (it is not parked on the head's wrong guess)
    np.testing.assert_allclose(tracks[1, 3:], gt[1, 2] + np.array([[1, 0], [2, 0], [3, 0]]), atol=1e-4)
    assert (st.redetections, st.rejected, st.lost_new) == (1, 1, 1)
    assert st.not_visible == 3


def test_without_a_verifier_every_seen_candidate_is_taken():
    """The rule alone (verifier None): the same broken step re-detects both queries to the head."""
    T = 4
    q = np.array([[0, 40.0, 40.0]], np.float32)
    good, bad = _const_flow(1, 0, 80, 100), _const_flow(-1, 0, 80, 100)
    head = np.stack([np.stack([q[0, 1] + np.arange(T), np.full(T, q[0, 2])], 1)]).astype(np.float32)
    head[0, 2] = (70.0, 20.0)
    vis = np.ones((1, T), bool)
    tracks, visible, _ = fuse_tracks(TrackResult(head, vis, vis.astype(np.float32), q),
                                     lambda t: (good, _const_flow(3, 0, 80, 100)) if t == 1 else (good, bad),
                                     T, 3.0, 1.5, verifier=None)
    assert tracks[0, 2].tolist() == [70.0, 20.0] and visible[0].all()


def test_drift_correction_needs_the_foreground_at_the_landing_point():
    """Consistent flow (the background's, 0 px/frame) keeps a point queried on a moving object in place:
    it leaves the object's mask at frame 2. The head sees it on the object: re-detected there. With the
    head's candidate off the mask too, nothing is corrected."""
    T = 4
    frames = _textured_clip(T)
    q = np.array([[0, 40.0, 40.0]], np.float32)
    gt = np.stack([np.stack([q[0, 1] + 4 * np.arange(T), np.full(T, q[0, 2])], 1)]).astype(np.float32)
    frames = np.stack([np.roll(frames[0], shift=4 * k, axis=1) for k in range(T)])  # object moves 4 px/frame
    zero = _const_flow(0, 0, 80, 100)

    def on_object(t, xy):  # the object's mask: a band 3 px either side of the moving point
        return np.abs(xy[:, 0] - (q[0, 1] + 4 * t)) <= 3.0

    vis = np.ones((1, T), bool)
    dino = TrackResult(gt.copy(), vis, vis.astype(np.float32), q)
    verifier = TemplateVerifier(frames, q, half=8, search_px=8)
    st = FusionStats()
    tracks, visible, _ = fuse_tracks(dino, lambda t: (zero, zero), T, 3.0, 1.5, verifier, 0.5,
                                     foreground=on_object, stats=st)
    # every step: flow stays 4 px behind, off the object, the head sees it 4 px (> 3) away -> verified
    np.testing.assert_allclose(tracks[0], gt[0], atol=1e-4)
    assert visible[0].all() and st.drift_redetections == T - 1
    # a foreground that excludes everything at frames >= 1: the correction may not land there
    none_after_0 = lambda t, xy: np.full(len(xy), t == 0)  # noqa: E731
    tracks, _, _ = fuse_tracks(dino, lambda t: (zero, zero), T, 3.0, 1.5, verifier, 0.5, foreground=none_after_0)
    assert tracks[0, 3].tolist() == [40.0, 40.0]
    # no foreground known: drift is never corrected either
    tracks, _, _ = fuse_tracks(dino, lambda t: (zero, zero), T, 3.0, 1.5, verifier, 0.5, foreground=None)
    assert tracks[0, 3].tolist() == [40.0, 40.0]


def test_backward_pass_starts_fresh_from_the_query():
    """A query at frame 2 whose forward steps lose it is still followed (visible) backwards."""
    T = 5
    q = np.array([[2, 40.0, 40.0]], np.float32)
    good, bad = _const_flow(1, 0, 80, 100), _const_flow(-1, 0, 80, 100)
    head = np.stack([np.stack([q[0, 1] + np.arange(T) - 2, np.full(T, q[0, 2])], 1)]).astype(np.float32)
    vis = np.ones((1, T), bool)
    vis[0, 3:] = False  # head blind after the query; flow broken at 2 -> 3
    dino = TrackResult(head, vis, vis.astype(np.float32), q)
    st = FusionStats()
    tracks, visible, _ = fuse_tracks(dino, lambda t: (good, _const_flow(3, 0, 80, 100)) if t == 2 else (good, bad),
                                     T, 3.0, 1.5, verifier=None, stats=st)
    assert visible[0].tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(tracks[0, :3], head[0, :3], atol=1e-4)
    assert st.flow_calls == 2 * (2 + 2)  # forward pairs 2->3, 3->4; backward 1->0, 2->1


def test_template_verifier_finds_a_known_shift_and_refuses_what_it_cannot_compare():
    """Frame 1 = frame 0 shifted by (+5, -3) px: from 4.5 px off, the match is the true position with
    correlation 1; a flat clip, or a window leaving the frame, gives -1; pure noise stays far below 0.5."""
    f0 = texture(80, 100, seed=4)
    f1 = np.roll(f0, shift=(-3, 5), axis=(0, 1))
    q = np.array([[0, 40.0, 40.0]], np.float32)
    ver = TemplateVerifier(np.stack([f0, f1]), q, half=8, search_px=10)
    true = np.array([[45.0, 37.0]])
    peak, xy = ver.match(np.array([0]), 1, true + np.array([[4.0, -2.0]]))
    np.testing.assert_allclose(xy, true)
    assert peak[0] == pytest.approx(1.0, abs=1e-4)
    flat = TemplateVerifier(np.full((2, 80, 100, 3), 128, np.uint8), q, half=8, search_px=10)
    assert flat.match(np.array([0]), 1, true)[0][0] == -1.0
    assert ver.match(np.array([0]), 1, np.array([[3.0, 37.0]]))[0][0] == -1.0  # window leaves the frame
    noise = np.random.default_rng(0).integers(0, 255, f0.shape, dtype=np.uint8)
    strict = TemplateVerifier(np.stack([f0, noise]), q, half=8, search_px=10)
    assert strict.match(np.array([0]), 1, true)[0][0] < 0.5


def test_dino_flow_tracker_end_to_end(tmp_path, one_torch_thread):
    """On a clip translating by (-3, -1) px/frame the fused tracker is (near) exact, every point visible,
    and never worse than the pure head on the same fitted model."""
    T, dx, dy = 6, 3, 1
    clip = translating_clip(64, 96, T, dx, dy)
    cfg = preset("fast", iterations=20, batch_size=64, cyc_after=15, rbb_after=15, checkpoint_every=10,
                 log_every=10, cl_points=32, cyc_points=32, seed=3, work_dir=str(tmp_path / "w"))
    backend = load_backend("dsift", patch_size=8, stride=4)
    q = np.array([[0, 40.0, 30.0], [2, 50.0, 25.0]])
    gt = gt_track(q, T, dx, dy)
    fused = build_tracker("dino-flow", backend, cfg, progress=False).fit(clip)
    pure = build_tracker("dino", backend, cfg, progress=False).fit(clip)
    res = fused.track(q)
    e_f = np.linalg.norm(res.tracks - gt, axis=-1)
    e_p = np.linalg.norm(pure.track(q).tracks - gt, axis=-1)
    assert e_f.max() < 1.0, e_f
    assert res.visible.all()
    assert e_f.mean() <= e_p.mean() + 1e-6
    assert fused.fusion_stats.flow_calls > 0


# --- issue 29: every branch pinned, with head confidences other than 1.0 ---------------------------------------

def _region_flows(h=80, w=100):
    """Forward flow (+2, 0) everywhere; backward (-1.5, 0) left of x = 50 (forward-backward error 0.5 px,
    consistent at fb_px 1.5) and 0 right of it (error 2 px: inconsistent)."""
    fwd = _const_flow(2, 0, h, w)
    bwd = _const_flow(-1.5, 0, h, w)
    bwd[:, 50:] = 0.0
    return fwd, bwd


def test_confidence_is_the_larger_of_flows_and_the_heads_where_flow_is_followed():
    """Hand values: consistent flow with a 0.5 px forward-backward error has confidence 1 / (1 + (0.5 / 1.5)^2)
    = 0.9. A (head 0.3, not seeing): 0.9, flow's. B (head 0.95): 0.95, the head's. C (flow inconsistent,
    2 px, but the seeing head agrees 0.5 px away, head 0.3): flow's confidence counts 0 there -> 0.3.
    (1 / (1 + (2 / 1.5)^2) = 0.36 would show if inconsistent flow kept its formula.)"""
    fwd, bwd = _region_flows()
    q = np.array([[0, 20.0, 20.0], [0, 20.0, 50.0], [0, 70.0, 20.0]], np.float32)
    head = np.zeros((3, 2, 2), np.float32)
    head[:, 0] = q[:, 1:]
    head[:, 1] = [[22.0, 20.0], [22.0, 50.0], [72.5, 20.0]]
    dvis = np.array([[True, False], [True, True], [True, True]])
    dconf = np.array([[1.0, 0.3], [1.0, 0.95], [1.0, 0.3]], np.float32)
    tracks, visible, conf = fuse_tracks(TrackResult(head, dvis, dconf, q), lambda t: (fwd, bwd), 2, 3.0, 1.5,
                                        verifier=None)
    assert visible[:, 1].all()
    np.testing.assert_allclose(tracks[:, 1], [[22, 20], [22, 50], [72, 20]], atol=1e-5)  # flow's positions
    assert conf[:, 1].tolist() == pytest.approx([0.9, 0.95, 0.3], abs=1e-6)
    assert conf[:, 0].tolist() == [1.0, 1.0, 1.0]  # the query frame


def test_redetection_confidence_is_the_verification_correlation_not_the_heads():
    """A verified re-detection reports the normalised cross-correlation of the match (computed here
    independently in numpy at the matched position), whatever the head's confidence (0.2). Frame 1 is
    frame 0 shifted by +3 px plus noise, so the correlation is below 1."""
    f0 = texture(80, 100, seed=4)
    noise = np.random.default_rng(1).normal(0, 25, f0.shape)
    f1 = np.clip(np.roll(f0, 3, axis=1) + noise, 0, 255).astype(np.uint8)
    frames = np.stack([f0, f1])
    q = np.array([[0, 40.0, 40.0]], np.float32)
    head = np.array([[[40.0, 40.0], [44.0, 41.0]]], np.float32)  # 1.4 px from the truth (43, 40)
    vis = np.ones((1, 2), bool)
    broken = (_const_flow(3, 0, 80, 100), _const_flow(0, 0, 80, 100))  # 3 px fb error: broken, head far
    tracks, visible, conf = fuse_tracks(TrackResult(head, vis, np.array([[1.0, 0.2]], np.float32), q),
                                        lambda t: broken, 2, 1.0, 1.5,
                                        TemplateVerifier(frames, q, half=8, search_px=8), 0.5)
    assert visible[0, 1] and tracks[0, 1].tolist() == [43.0, 40.0]

    def gray(img):
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)

    tpl = gray(f0)[32:49, 32:49]
    win = gray(f1)[32:49, 35:52]
    a, b = tpl - tpl.mean(), win - win.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    assert 0.5 < ncc < 0.99
    assert conf[0, 1] == pytest.approx(ncc, abs=1e-4)


def _drifting_object(T, drift_frames, foreground_after_0=True, drift_fail="lost"):
    """The object (textured, queried at x = 40) moves +4 px/frame; flow is the background's (0 px), so
    consistent flow leaves the object's mask (a band 3 px either side of the truth) at frame 1. The head
    sees the truth (4 px or more from flow: far at 3 px), confidence 0.6."""
    base = texture(80, 100, seed=4)
    frames = np.stack([np.roll(base, shift=4 * k, axis=1) for k in range(T)])
    q = np.array([[0, 40.0, 40.0]], np.float32)
    gt = np.stack([np.stack([q[0, 1] + 4 * np.arange(T), np.full(T, q[0, 2])], 1)]).astype(np.float32)

    def on_object(t, xy):
        band = np.abs(xy[:, 0] - (q[0, 1] + 4 * t)) <= 3.0
        return band if (foreground_after_0 or t == 0) else np.zeros(len(xy), bool)

    vis = np.ones((1, T), bool)
    zero = _const_flow(0, 0, 80, 100)
    st = FusionStats()
    out = fuse_tracks(TrackResult(gt.copy(), vis, np.full((1, T), 0.6, np.float32), q), lambda t: (zero, zero), T,
                      3.0, 1.5, TemplateVerifier(frames, q, half=8, search_px=8), 0.5, drift_frames,
                      foreground=on_object, stats=st, drift_fail=drift_fail)
    return (*out, st)


def test_a_failed_drift_correction_makes_the_point_lost():
    """The rule (measured on both labelled clips, docs/tracking.md): a drift candidate whose correction may not
    land (no foreground after frame 0) is lost -- not visible, confidence 0, kept where flow takes it --
    and stays not visible; it does NOT keep following flow as a visible point."""
    tracks, visible, conf, st = _drifting_object(4, 1, foreground_after_0=False)
    assert visible[0].tolist() == [True, False, False, False]
    assert conf[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert tracks[0].tolist() == [[40.0, 40.0]] * 4  # flow's (background) position, not the head's
    assert (st.redetections, st.rejected, st.lost_new) == (0, 3, 3)
    # the development variant (scripts/tune_fusion.py --drift-fail flow): visible on flow, flow's confidence
    # (forward-backward error 0: 1.0, above the head's 0.6)
    tracks, visible, conf, st = _drifting_object(4, 1, foreground_after_0=False, drift_fail="flow")
    assert visible[0].all() and conf[0].tolist() == [1.0] * 4 and tracks[0].tolist() == [[40.0, 40.0]] * 4
    assert (st.rejected, st.lost_new) == (3, 0)
    with pytest.raises(ValueError, match="drift_fail"):
        _drifting_object(2, 1, drift_fail="head")


def test_drift_counter_restarts_after_a_correction():
    """drift_frames 2: flow is off the object at frames 1 and 2 (run 1, 2) -> corrected at frame 2 onto the
    object (x 48); the counter restarts, so frame 3 follows flow again (x stays 48, run 1) and frame 4 is
    corrected (x 56). Every step is visible: following consistent flow (confidence 1.0, above the head's
    0.6), or a verified exact match (correlation 1)."""
    tracks, visible, conf, st = _drifting_object(5, 2)
    assert tracks[0, :, 0].tolist() == [40.0, 40.0, 48.0, 48.0, 56.0]
    assert visible[0].all() and conf[0].tolist() == pytest.approx([1.0] * 5, abs=1e-4)
    assert st.drift_redetections == 2


def test_a_lost_point_is_clamped_to_the_frame_and_stays_there():
    """Flow carries a point out of the frame (x 98 + 5 > 99) with a blind head: lost, placed at the frame's
    edge (x 99), and on the next step (flow again out) at the edge again; not visible, confidence 0."""
    h, w = 80, 100
    q = np.array([[0, 98.0, 40.0], [0, 30.0, 78.0]], np.float32)
    fwd, bwd = _const_flow(5, 4, h, w), _const_flow(-5, -4, h, w)
    head = np.repeat(q[:, None, 1:], 3, axis=1).astype(np.float32)
    dvis = np.array([[True, False, False]] * 2)
    tracks, visible, conf = fuse_tracks(TrackResult(head, dvis, np.full((2, 3), 0.4, np.float32), q),
                                        lambda t: (fwd, bwd), 3, 3.0, 1.5, verifier=None)
    assert tracks[0, 1:].tolist() == [[99.0, 44.0], [99.0, 48.0]]   # x clamped, y as flow moved it
    assert tracks[1, 1:].tolist() == [[35.0, 79.0], [40.0, 79.0]]   # y clamped (h - 1 = 79)
    assert not visible[:, 1:].any() and (conf[:, 1:] == 0).all()


def test_a_blind_head_is_not_far_and_counts_nothing_towards_drift():
    """Consistent flow off the foreground: only a head that SEES the point elsewhere counts towards drift.
    A blind head, far (8.9 px) or near (1 px), leaves the run at 0 and makes no candidate."""
    fwd, bwd = _const_flow(2, 1), _const_flow(-2, -1)
    off = lambda f: np.ones(len(f), bool)  # noqa: E731
    dec = _step([[10, 10]] * 2, fwd, bwd, [[20, 15], [13, 11]], [False, False], run=0, left_fg=off)
    assert dec.follow.all() and not dec.candidate.any() and not dec.drift.any()
    assert dec.run.tolist() == [0, 0]
    # a run already under way is reset by a blind head (not continued)
    dec = _step([[10, 10]], fwd, bwd, [[20, 15]], [False], run=2, left_fg=off, drift_frames=3)
    assert dec.run.tolist() == [0] and not dec.candidate.any()


def test_template_verifier_defaults_are_the_documented_17_px_patch_and_16_px_search():
    """The tracker builds its verifier with the default patch (17x17 px: half 8) -- the module docstring's
    number; the default search radius is 16 px. (Mutation testing: the defaults survived.)"""
    f0 = texture(80, 100, seed=4)
    ver = TemplateVerifier(np.stack([f0, f0]), np.array([[0, 40.0, 40.0]], np.float32))
    assert ver.templates[0].shape == (17, 17) and ver.half == 8 and ver.search == 16
    np.testing.assert_array_equal(ver.templates[0], cv2.cvtColor(f0, cv2.COLOR_RGB2GRAY)[32:49, 32:49])


def test_template_patch_edges_and_match_leaves_the_callers_array_alone():
    """A 17x17 patch (half 8) fits exactly when its centre is 8 px from every edge of a 30 x 20 image (x 8..21,
    y 8..11) and is refused one pixel further out, on each of the four sides. ``match`` returns float32 arrays
    and never writes into the positions it was given. (Mutation testing: the edge comparisons, the dtypes
    and the copy survived.)"""
    img = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    fits = [(8, 8), (21, 8), (8, 11), (21, 11)]
    refused = [(7, 9), (22, 9), (9, 7), (9, 12)]
    assert all(TemplateVerifier._patch(img, x, y, 8) is not None for x, y in fits)
    assert all(TemplateVerifier._patch(img, x, y, 8) is None for x, y in refused)
    np.testing.assert_array_equal(TemplateVerifier._patch(img, 8, 8, 8), img[0:17, 0:17])
    f0 = texture(80, 100, seed=4)
    f1 = np.roll(f0, shift=(-3, 5), axis=(0, 1))
    ver = TemplateVerifier(np.stack([f0, f1]), np.array([[0, 40.0, 40.0]], np.float32), half=8, search_px=10)
    xy = np.array([[49.0, 35.0]], np.float32)
    peaks, out = ver.match(np.array([0]), 1, xy)
    assert peaks.dtype == np.float32 and out.dtype == np.float32
    assert out.tolist() == [[45.0, 37.0]] and xy.tolist() == [[49.0, 35.0]]
    assert ver.match(np.array([0]), 1, xy.astype(np.float64))[1].dtype == np.float32  # float64 in: float32 out


def test_fuse_tracks_leaves_the_head_result_alone_and_prints_nothing(capfd):
    """The head's TrackResult is not written into (positions change here: the point is lost and clamped), and
    no progress bar unless asked. (Mutation testing: the copy and the progress default survived.)"""
    q = np.array([[0, 98.0, 40.0]], np.float32)
    head = np.repeat(q[:, None, 1:], 3, axis=1).astype(np.float32)
    before = head.copy()
    dvis = np.array([[True, False, False]])
    res = TrackResult(head, dvis, np.full((1, 3), 0.4, np.float32), q)
    fwd, bwd = _const_flow(5, 4, 80, 100), _const_flow(-5, -4, 80, 100)
    tracks, _, _ = fuse_tracks(res, lambda t: (fwd, bwd), 3, 3.0, 1.5, verifier=None)
    assert tracks[0, 1].tolist() == [99.0, 44.0]
    np.testing.assert_array_equal(res.tracks, before)
    assert capfd.readouterr().err == ""
