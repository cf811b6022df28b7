"""Flow-guided fusion (tracker ``dino-flow``): hand-built flows and DINO predictions with known answers,
and the tracker end to end on a translating clip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from cosettle.io.tracks import TrackResult
from tests._tracker_synth import gt_track, translating_clip
from tracker import build_tracker
from tracker.config import preset
from tracker.flow_guided import FusionStats, fuse_step, fuse_tracks

torch.set_num_threads(1)
H, W = 20, 30


def _const_flow(dx, dy):
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def test_step_follows_consistent_flow_near_dino():
    p = np.array([[10.0, 10.0]], np.float32)
    fwd, bwd = _const_flow(2, 1), _const_flow(-2, -1)
    d = np.array([[13.0, 11.0]], np.float32)  # 1 px from the flow candidate (12, 11)
    p_b, use_flow, redet, cons, err = fuse_step(p, fwd, bwd, d, np.array([True]), snap_px=3.0, fb_px=1.5)
    assert p_b.tolist() == [[12.0, 11.0]] and use_flow.all() and not redet.any() and err[0] == 0


def test_step_redetects_when_flow_strays_from_a_visible_dino_prediction():
    p = np.array([[10.0, 10.0]], np.float32)
    fwd, bwd = _const_flow(2, 1), _const_flow(-2, -1)
    d = np.array([[20.0, 15.0]], np.float32)  # 8.9 px away > snap 3
    p_b, use_flow, redet, _, _ = fuse_step(p, fwd, bwd, d, np.array([True]), 3.0, 1.5)
    assert p_b.tolist() == [[20.0, 15.0]] and redet.all() and not use_flow.any()
    # the same disagreement with DINO marking the point occluded: flow is kept
    p_b, use_flow, redet, _, _ = fuse_step(p, fwd, bwd, d, np.array([False]), 3.0, 1.5)
    assert p_b.tolist() == [[12.0, 11.0]] and use_flow.all() and not redet.any()


def test_step_inconsistent_flow():
    p = np.array([[10.0, 10.0], [10.0, 10.0]], np.float32)
    fwd, bwd = _const_flow(2, 0), _const_flow(0, 0)  # back-projection misses by 2 px > 1.5
    d = np.array([[12.5, 10.0], [12.5, 10.0]], np.float32)
    p_b, use_flow, redet, cons, err = fuse_step(p, fwd, bwd, d, np.array([True, False]), 3.0, 1.5)
    assert not cons.any() and err.tolist() == pytest.approx([2.0, 2.0])
    assert p_b.tolist() == [[12.5, 10.0], [12.0, 10.0]]  # re-detected / coasting on flow
    assert redet.tolist() == [True, False] and not use_flow.any()


def test_fuse_tracks_forward_and_backward_counts():
    """Two queries (frames 0 and 2) on a 4-frame clip with a constant +1 px/frame flow; DINO agrees
    except one wrong, visible prediction 10 px off (re-detection) and one occluded frame."""
    T = 4
    fwd, bwd = _const_flow(1, 0), _const_flow(-1, 0)
    q = np.array([[0, 5.0, 5.0], [2, 8.0, 6.0]], np.float32)
    gt = np.stack([np.stack([q[i, 1] + np.arange(T) - q[i, 0], np.full(T, q[i, 2])], 1) for i in range(2)])
    dino_tr = gt.copy()
    dino_vis = np.ones((2, T), bool)
    dino_tr[0, 3] += (10, 0)          # query 0, frame 3: DINO visible and far -> re-detect to it
    dino_vis[1, 0] = False            # query 1, frame 0: DINO unsure -> flow
    dino_tr[1, 0] += (6, 0)
    dino = TrackResult(dino_tr, dino_vis, dino_vis.astype(np.float32), q)
    st = FusionStats()
    tracks, vis, conf = fuse_tracks(dino, lambda t: (fwd, bwd), T, snap_px=3.0, fb_px=1.5, stats=st)
    expect = gt.copy()
    expect[0, 3] = dino_tr[0, 3]
    np.testing.assert_allclose(tracks, expect, atol=1e-5)
    assert vis.all()
    # forward: q0 3 steps + q1 1 step; backward: q1 2 steps; one of the 6 is a re-detection
    assert (st.flow_steps, st.redetections, st.coasting) == (5, 1, 0)
    assert st.flow_calls == 2 * (3 + 2)  # forward pairs 0..2, backward pairs 1, 0 (q1 only)
    assert conf[1, 2] == 1.0 and conf[0, 3] == 1.0


def test_dino_flow_tracker_end_to_end(tmp_path):
    """On a clip translating by (-3, -1) px/frame the fused tracker is (near) exact and never worse
    than the pure head on the same fitted model."""
    T, dx, dy = 6, 3, 1
    clip = translating_clip(64, 96, T, dx, dy)
    cfg = preset("fast", iterations=20, batch_size=64, cyc_after=15, rbb_after=15, checkpoint_every=10,
                 log_every=10, cl_points=32, cyc_points=32, seed=3, work_dir=str(tmp_path / "w"))
    backend = load_backend("dsift", patch_size=8, stride=4)
    q = np.array([[0, 40.0, 30.0], [2, 50.0, 25.0]])
    gt = gt_track(q, T, dx, dy)
    fused = build_tracker("dino-flow", backend, cfg, progress=False).fit(clip)
    pure = build_tracker("dino", backend, cfg, progress=False).fit(clip)
    e_f = np.linalg.norm(fused.track(q).tracks - gt, axis=-1)
    e_p = np.linalg.norm(pure.track(q).tracks - gt, axis=-1)
    assert e_f.max() < 1.0, e_f
    assert e_f.mean() <= e_p.mean() + 1e-6
    assert fused.fusion_stats.flow_calls > 0


def test_template_refiner_recovers_a_known_shift():
    """A textured frame 0 and frame 1 = frame 0 shifted by (+5, -3) px: a re-detection 6 px off the
    true position is moved exactly onto it; a flat patch, or a match below min_ncc, stays put."""
    from tests._tracker_synth import texture
    from tracker.flow_guided import TemplateRefiner

    f0 = texture(80, 100, seed=4)
    f1 = np.roll(f0, shift=(-3, 5), axis=(0, 1))
    frames = np.stack([f0, f1])
    q = np.array([[0, 40.0, 40.0]], np.float32)
    ref = TemplateRefiner(frames, q, half=8, search_px=10, min_ncc=0.6)
    true = np.array([[45.0, 37.0]])
    got = ref(np.array([0]), 1, true + np.array([[4.0, -2.0]]))  # 4.5 px off
    np.testing.assert_allclose(got, true)
    assert ref.refined == 1
    flat = np.full_like(frames, 128)
    ref_flat = TemplateRefiner(flat, q, half=8, search_px=10, min_ncc=0.6)
    start = true + 4.0
    np.testing.assert_allclose(ref_flat(np.array([0]), 1, start), start)  # no texture: unchanged
    noise = np.random.default_rng(0).integers(0, 255, f0.shape, dtype=np.uint8)
    ref_strict = TemplateRefiner(np.stack([f0, noise]), q, half=8, search_px=10, min_ncc=0.6)
    np.testing.assert_allclose(ref_strict(np.array([0]), 1, start), start)  # nothing similar: unchanged
