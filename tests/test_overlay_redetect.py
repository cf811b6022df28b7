"""The overlay marks only what the tracker reports (issue 28): a large step that no tracker reported as a
re-detection gets no square (it once marked every large step: correctly followed fast points and ``flow``
runs that re-detect nothing were marked), ``dino-flow`` reports its verified re-detections per point and
frame, and a grid's legend says how many points it does not list instead of naming the first 24."""
from __future__ import annotations

import types

import numpy as np

from cosettle.backends.registry import load_backend
from cosettle.io.overlay import MAX_LEGEND, _line_h, _sizes, draw_overlay_frames, overlay_still
from cosettle.io.tracks import TrackResult, load_tracks, save_tracks
from tests._tracker_synth import texture, translating_clip
from tracker import build_tracker, preset
from tracker import fusion as fusion_mod

GREY = 60
H, W, T = 120, 240, 12


def _clip(t=T, h=H, w=W):
    return np.full((t, h, w, 3), GREY, np.uint8)


def _walk_with_jump(jump_at=6):
    """x = 20 + 2 px per frame along y = 60, plus a 150-px jump to the right at ``jump_at``."""
    tr = np.zeros((1, T, 2), np.float32)
    tr[0, :, 0] = 20 + 2 * np.arange(T)
    tr[0, :, 1] = 60
    tr[0, jump_at:, 0] += 150
    return tr


def _result(tracks, redetected=None):
    n, t = tracks.shape[:2]
    vis = np.ones((n, t), bool)
    return TrackResult(tracks, vis, np.full((n, t), 0.9), np.concatenate([np.zeros((n, 1)), tracks[:, 0]], 1),
                       redetected=redetected)


def _square_edge(frame, p):
    """The pixels of a re-detection square's lower edge around position p (hand-computed: the disc radius
    is 3 px at 120x240, the square's half-side r + 2 * line + 1 = 6 px; labels sit above a marker)."""
    x, y = int(round(p[0])), int(round(p[1]))
    return frame[y + 6, x - 5:x + 6]


def test_a_large_step_the_tracker_did_not_report_gets_no_square():
    tr = _walk_with_jump()
    frames = list(draw_overlay_frames(_clip(), _result(tr), style="trails"))
    for t in range(6, 10):
        assert (_square_edge(frames[t], tr[0, t]) == GREY).all(), f"frame {t} marked a re-detection nobody reported"
    # the trail still breaks across the jump (no line drawn through motion that never happened)
    assert (frames[8][55:66, 60:150] == GREY).all()


def test_a_reported_redetection_is_marked_for_four_frames_where_it_landed():
    tr = _walk_with_jump()
    rep = np.zeros((1, T), bool)
    rep[0, 6] = True
    frames = list(draw_overlay_frames(_clip(), _result(tr, rep), style="trails"))
    for t in range(6, 10):
        assert (_square_edge(frames[t], tr[0, t]) != GREY).sum() >= 8, t
    for t in (5, 10, 11):
        assert (_square_edge(frames[t], tr[0, t]) == GREY).all(), t


def test_fusion_reports_its_verified_redetections_per_point_and_frame():
    """Flow breaks at step 2 -> 3 (fb error 4 px) and the head sees point 0 where its texture is (verified):
    one re-detection, at point 0, frame 3; point 1 keeps following consistent flow (none)."""
    f0 = texture(80, 100, seed=4)
    frames = np.stack([np.roll(f0, shift=k, axis=1) for k in range(6)])  # scene moves +1 px/frame in x
    q = np.array([[0, 40.0, 40.0], [0, 55.0, 30.0]], np.float32)
    gt = np.stack([np.stack([q[i, 1] + np.arange(6), np.full(6, q[i, 2])], 1) for i in range(2)])

    def const(dx):
        f = np.zeros((80, 100, 2), np.float32)
        f[..., 0] = dx
        return f

    def flow_pair(t):  # both points' flow breaks at 2 -> 3 (back-flow 3 px where -1 px is consistent)
        return (const(1), const(3)) if t == 2 else (const(1), const(-1))

    head = gt.copy()
    head[0, 3] += (5, 3)        # point 0: the head 5.8 px off, on its own texture -> verified
    head[1, 3] = (80.0, 60.0)   # point 1: the head on other texture -> rejected, not a re-detection
    vis = np.ones((2, 6), bool)
    st = fusion_mod.FusionStats()
    fusion_mod.fuse_tracks(TrackResult(head.astype(np.float32), vis, vis.astype(np.float32), q), flow_pair, 6,
                           3.0, 1.5, fusion_mod.TemplateVerifier(frames, q, half=8, search_px=8), 0.5, stats=st)
    expected = np.zeros((2, 6), bool)
    expected[0, 3] = True
    assert st.redetected.tolist() == expected.tolist() and st.redetections == 1


def test_dino_flow_hands_its_report_to_the_result_and_flow_reports_none(monkeypatch, tmp_path):
    clip = translating_clip(64, 96, 6, 3, 1)
    q = np.array([[0, 40.0, 30.0], [0, 50.0, 25.0]])
    flow = build_tracker("flow").fit(clip).track(q)
    assert flow.redetected is None   # flow re-detects nothing: the overlay marks nothing

    backend = load_backend("dsift", patch_size=8, stride=4)
    # fusion_train=always: the fused path with the given head (no flow pre-pass, tracker/fusion_gate.py)
    fused = build_tracker("dino-flow", backend, preset("fast", fusion_train="always"), progress=False)
    head = TrackResult(np.zeros((2, 6, 2), np.float32), np.ones((2, 6), bool), np.ones((2, 6)), q)
    fused.track_head = lambda queries, occlusion=None: head            # no training: the head is given
    fused._frames, fused.geometry_image_hw = clip, (64, 96)
    fused.prep = types.SimpleNamespace(geometry=backend.geometry(64, 96), masks=np.ones((6, 64, 96), bool))
    report = np.zeros((2, 6), bool)
    report[1, 4] = True

    def fake_fuse(dino, flow_pair, num_frames, *args, stats=None, **kwargs):
        stats.redetected = report.copy()
        return np.zeros((2, 6, 2), np.float32), np.ones((2, 6), bool), np.ones((2, 6), np.float32)

    monkeypatch.setattr(fusion_mod, "fuse_tracks", fake_fuse)
    res = fused.track(q)
    assert res.redetected.tolist() == report.tolist()
    # and it survives tracks.npz
    save_tracks(tmp_path, res, 24.0, (64, 96))
    assert load_tracks(tmp_path / "tracks.npz")[0].redetected.tolist() == report.tolist()
    save_tracks(tmp_path / "f", flow, 24.0, (64, 96))
    assert load_tracks(tmp_path / "f" / "tracks.npz")[0].redetected is None


def test_a_grid_legend_says_how_many_points_it_does_not_list():
    """64 points: the still's legend strip is one note line and the key (it listed g0-g23 in 8-row columns,
    with nothing said about g24-g63)."""
    n, h, w = 64, 192, 256
    ys, xs = np.mgrid[0:8, 0:8]
    tr = np.stack([xs.ravel() * 30 + 10, ys.ravel() * 22 + 10], -1)[:, None].repeat(3, 1).astype(np.float32)
    res = _result(tr)
    res.names = [f"g{i}" for i in range(n)]
    still = overlay_still(_clip(3, h, w), res, style="trails")
    line_h = _line_h(_sizes(h, w, n, "trails"))
    assert still.shape[0] - h == 2 * line_h + 8        # the note row and the marker key, no 24 name rows
    assert n > MAX_LEGEND
    strip = still[h:]
    assert (strip[:line_h + 3] != 0).any()             # the note is drawn
