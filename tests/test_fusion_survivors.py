"""``fuse_tracks`` (tracker/fusion.py): tests for the mutants that survived mutation testing (issue 29,
docs/development.md "Mutation testing: measured"). Hand-built flows, head predictions and foreground masks;
every expected value below is derived in the docstring or comment next to it, not read from a run.

Shared set-up: frames 80 x 100 px, ``snap_px`` 3, ``fb_px`` 1.5; a flow pair whose forward and backward flows
cancel has forward-backward error 0 (consistent, flow confidence 1 / (1 + 0) = 1)."""
from __future__ import annotations

import time

import numpy as np

from cosettle.io.tracks import TrackResult
from tracker.fusion import FusionStats, fuse_step, fuse_tracks

H, W = 80, 100


def _const_flow(dx, dy):
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


ZERO = _const_flow(0, 0)


def _object_mask(t):
    """Frame t's foreground: an object at x in [37 + 4t, 43 + 4t], y in [15, 25] (it moves +4 px/frame)."""
    m = np.zeros((H, W), bool)
    m[15:26, 37 + 4 * t: 44 + 4 * t] = True
    return m


def _on_object(t, xy):
    """``foreground(t, xy)`` as the tracker's (a mask lookup at (x, y), rounded; outside the frame: no)."""
    xy = np.asarray(xy, np.float64)
    x, y = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    out = np.zeros(len(xy), bool)
    out[ok] = _object_mask(t)[y[ok], x[ok]]
    return out


class _Stub:
    """A verifier whose correlation is given: ``match`` finds every candidate exactly where the head put it."""

    def __init__(self, peak):
        self.peak = peak

    def match(self, idx, frame, xy):
        return np.full(len(idx), self.peak, np.float32), np.array(xy, np.float32)


def test_counters_time_and_output_dtypes_of_a_broken_step():
    """T 4, two queries at frame 0, flow (+1, 0) with a backward flow that cancels it, except pair 1 -> 2
    whose backward flow is (+3, 0): error 4 px > 1.5, flow broken for both. At frame 2 the head sees query 0
    (5, 3) px off flow's candidate (5.8 px > 3: far, a re-detection candidate; no verifier: accepted there) and
    is blind for query 1 (no candidate: lost, and not visible while it follows flow to frame 3).

    Point-steps 3 x 2 = 6; followed flow and not re-detected (``flow_steps``): 2 + 0 + 2 = 4; re-detections 1
    (query 0 at frame 2), none of them drift corrections (flow broke, it did not drift); lost 1; not visible:
    query 1 at frames 2 and 3 = 2. ``stats`` adds to what it holds (100 s before the call): at least the
    3 x 5 ms the flow pairs sleep, at most the call's wall time. Outputs: the dtypes a TrackResult holds, float32
    positions and confidences and a bool visibility that can mask (``tracks[visible]``; a float one cannot
    index); the callers in this repository convert it to bool themselves, so this pins the function's own
    contract."""
    T = 4
    q = np.array([[0, 40.0, 40.0], [0, 60.0, 30.0]], np.float32)
    head = np.zeros((2, T, 2), np.float32)
    head[:, :, 0] = q[:, None, 1] + np.arange(T)  # flow's path, x + t
    head[:, :, 1] = q[:, None, 2]
    head[0, 2] = (42 + 5, 40 + 3)
    dvis = np.ones((2, T), bool)
    dvis[1, 2] = False
    fwd, bwd, broken_bwd = _const_flow(1, 0), _const_flow(-1, 0), _const_flow(3, 0)

    def flow_pair(t):
        time.sleep(0.005)
        return fwd, (broken_bwd if t == 1 else bwd)

    st = FusionStats(seconds=100.0)
    t0 = time.perf_counter()
    tracks, visible, conf = fuse_tracks(TrackResult(head, dvis, np.full((2, T), 0.3, np.float32), q), flow_pair,
                                        T, 3.0, 1.5, verifier=None, stats=st)
    wall = time.perf_counter() - t0
    assert tracks[0].tolist() == [[40, 40], [41, 40], [47, 43], [48, 43]]  # re-detected at the head, then flow
    assert tracks[1].tolist() == [[60, 30], [61, 30], [62, 30], [63, 30]]  # lost: flow's positions
    assert visible.tolist() == [[True] * 4, [True, True, False, False]]
    assert (st.flow_steps, st.redetections, st.drift_redetections, st.rejected, st.lost_new, st.not_visible) == \
        (4, 1, 0, 0, 1, 2)
    assert st.flow_calls == 2 * 3
    # where a re-detection was verified, per point and frame (the TrackResult's ``redetected``, bool)
    assert st.redetected.dtype == bool and st.redetected.tolist() == [[False, False, True, False], [False] * 4]
    assert 100.0 + 3 * 0.005 <= st.seconds <= 100.0 + wall
    assert tracks.dtype == np.float32 and visible.dtype == bool and conf.dtype == np.float32


def test_no_queries_give_empty_results():
    """Zero queries: (0, T, 2) / (0, T) arrays and no flow computed (there is no query frame to start from)."""
    calls = []
    empty = TrackResult(np.zeros((0, 3, 2), np.float32), np.zeros((0, 3), bool), np.zeros((0, 3), np.float32),
                        np.zeros((0, 3), np.float32))
    tracks, visible, conf = fuse_tracks(empty, lambda t: calls.append(t) or (ZERO, ZERO), 3, 3.0, 1.5, None)
    assert tracks.shape == (0, 3, 2) and visible.shape == (0, 3) and conf.shape == (0, 3)
    assert calls == []


def test_a_lost_point_is_clamped_at_the_left_and_top_edges_too():
    """Flow (-5, -4) carries the point (1, 2) to (-4, -2): outside, the head blind -> lost, clamped to (0, 0);
    the next step leaves the frame again from (0, 0): (0, 0) again. Not visible, confidence 0."""
    q = np.array([[0, 1.0, 2.0]], np.float32)
    head = np.full((1, 3, 2), 50.0, np.float32)
    dvis = np.array([[True, False, False]])
    tracks, visible, conf = fuse_tracks(TrackResult(head, dvis, np.full((1, 3), 0.4, np.float32), q),
                                        lambda t: (_const_flow(-5, -4), _const_flow(5, 4)), 3, 3.0, 1.5, None)
    assert tracks[0].tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    assert visible[0].tolist() == [True, False, False] and conf[0].tolist() == [1.0, 0.0, 0.0]


def _drift_case(peak, verify_ncc=0.5):
    """T 2, background flow 0 px. Query 0 at (40, 20) is on the object (frame 0: x 37..43, y 15..25); flow
    keeps it at (40, 20), off the object at frame 1 (x 41..47), and the head sees it at (44, 20), 4 px away
    (far): a drift candidate at frame 1, which lands on the object. Query 1 at (60, 60) is made OFF the object
    (rows 15..25 only) and stays off it; the head sees it 4 px away at (64, 60): a query not made on the
    foreground cannot drift, so it follows flow, visible, confidence max(1, head 0.6) = 1."""
    q = np.array([[0, 40.0, 20.0], [0, 60.0, 60.0]], np.float32)
    head = np.array([[[40, 20], [44, 20]], [[60, 60], [64, 60]]], np.float32)
    vis = np.ones((2, 2), bool)
    st = FusionStats()
    out = fuse_tracks(TrackResult(head, vis, np.full((2, 2), 0.6, np.float32), q), lambda t: (ZERO, ZERO), 2,
                      3.0, 1.5, _Stub(peak), verify_ncc, 1, foreground=_on_object, stats=st)
    return (*out, st)


def test_a_drift_correction_needs_the_correlation_and_the_foreground():
    """Correlation 0.9 >= 0.5 and the head's point on the object: corrected to (44, 20), confidence 0.9 (the
    correlation), one drift re-detection. Correlation exactly at the threshold (0.5 >= 0.5) verifies too; so does
    -0.25 against a threshold of -0.5, with confidence 0.
    Correlation 0.2: rejected although the landing point is on the object -- lost at flow's (40, 20), not
    visible, confidence 0. Query 1 (made off the foreground) follows flow in all three."""
    tracks, visible, conf, st = _drift_case(0.9)
    assert tracks[:, 1].tolist() == [[44.0, 20.0], [60.0, 60.0]]
    assert visible[:, 1].tolist() == [True, True]
    assert conf[:, 1].tolist() == [np.float32(0.9), 1.0]
    assert (st.redetections, st.drift_redetections, st.rejected, st.flow_steps, st.lost_new) == (1, 1, 0, 1, 0)

    tracks, visible, conf, st = _drift_case(0.5, verify_ncc=0.5)
    assert tracks[0, 1].tolist() == [44.0, 20.0] and visible[0, 1] and conf[0, 1] == 0.5

    # fusion_verify_ncc may be negative (the config allows [-1, 1]): a negative correlation that passes it gives
    # confidence 0 (confidences are in [0, 1]), not the correlation
    tracks, visible, conf, st = _drift_case(-0.25, verify_ncc=-0.5)
    assert tracks[0, 1].tolist() == [44.0, 20.0] and visible[0, 1] and conf[0, 1] == 0.0

    tracks, visible, conf, st = _drift_case(0.2)
    assert tracks[:, 1].tolist() == [[40.0, 20.0], [60.0, 60.0]]
    assert visible[:, 1].tolist() == [False, True] and conf[:, 1].tolist() == [0.0, 1.0]
    assert (st.redetections, st.rejected, st.lost_new) == (0, 1, 1)


def _flow_pair_growing(t):
    """Flow t -> t+1 moves (+(t + 1), 0) px (pair 0: +1, pair 1: +2), the backward flow cancels it."""
    k = t + 1
    return _const_flow(k, 0), _const_flow(-k, 0)


def test_backward_pass_for_queries_at_frame_1_and_at_the_last_frame():
    """T 3, blind head (placeholder positions (5, 5)), flows that differ per pair. A query at frame 1 (40, 40)
    goes forwards 1 -> 2 with pair 1 (+2): (42, 40), and backwards 1 -> 0 with pair 0's backward flow (-1):
    (39, 40). A query at the last frame 2 (40, 40) goes backwards 2 -> 1 with pair 1 (-2): (38, 40), then
    1 -> 0 with pair 0 (-1): (37, 40). Every step is consistent: visible, confidence max(1, 0.3) = 1."""
    head = np.full((1, 3, 2), 5.0, np.float32)
    dvis = np.zeros((1, 3), bool)
    dconf = np.full((1, 3), 0.3, np.float32)
    for tq, want in ((1, [[39, 40], [40, 40], [42, 40]]), (2, [[37, 40], [38, 40], [40, 40]])):
        q = np.array([[tq, 40.0, 40.0]], np.float32)
        st = FusionStats()
        tracks, visible, conf = fuse_tracks(TrackResult(head, dvis, dconf, q), _flow_pair_growing, 3, 3.0, 1.5,
                                            None, stats=st)
        assert tracks[0].tolist() == want, tq
        assert visible[0].all() and conf[0].tolist() == [1.0, 1.0, 1.0], tq
        assert st.flow_calls == 2 * 2, tq  # two pairs, each once


def test_the_backward_pass_restarts_the_drift_counter():
    """drift_frames 2, T 3, query at frame 1 on the object (44, 20) (frame 1: x 41..47), background flow 0 px,
    head on the object (x 40 + 4t), 4 px from flow's candidate (far), no verifier. Forwards 1 -> 2: flow keeps
    (44, 20), off the object (frame 2: x 45..51): drift run 1 < 2, flow followed. Backwards 1 -> 0 starts a
    new run: (44, 20) is off frame 0's object (x 37..43), run 1 again: flow followed, (44, 20), visible. (A run
    carried over from the forward pass, or started at 1, would reach 2 and move the point to the head's
    (40, 20).)"""
    q = np.array([[1, 44.0, 20.0]], np.float32)
    head = np.array([[[40, 20], [44, 20], [48, 20]]], np.float32)
    vis = np.ones((1, 3), bool)
    st = FusionStats()
    tracks, visible, conf = fuse_tracks(TrackResult(head, vis, np.full((1, 3), 0.6, np.float32), q),
                                        lambda t: (ZERO, ZERO), 3, 3.0, 1.5, None, 0.5, 2, foreground=_on_object,
                                        stats=st)
    assert tracks[0].tolist() == [[44.0, 20.0]] * 3
    assert visible[0].all() and conf[0].tolist() == [1.0, 1.0, 1.0]
    assert st.drift_redetections == 0 and st.flow_steps == 2


# --- fuse_step: the boundaries of the rule and its output dtype --------------------------------------------------

def test_fuse_step_boundaries_are_strictly_below_fb_px_and_within_snap_px():
    """The module docstring: consistent when the forward-backward error is BELOW ``fusion_fb_px``; agreeing
    when the head is WITHIN ``fusion_snap_cells`` of the flow candidate. Forward (+2, 0), backward (-0.5, 0):
    from (10, 10) the candidate is (12, 10) and comes back to (11.5, 10), an error of exactly 1.5 = fb_px:
    inconsistent. A seeing head exactly 3 px (= snap_px) from the candidate agrees: flow is kept, no candidate;
    one 3.5 px away does not: a re-detection candidate. A float64 start gives a float32 flow candidate (the
    tracks' dtype)."""
    fwd, bwd = np.zeros((20, 30, 2), np.float32), np.zeros((20, 30, 2), np.float32)
    fwd[..., 0], bwd[..., 0] = 2.0, -0.5
    p = np.array([[10.0, 10.0], [10.0, 10.0]])  # float64
    dec = fuse_step(p, fwd, bwd, np.array([[15.0, 10.0], [15.5, 10.0]], np.float32), np.array([True, True]),
                    np.zeros(2, np.int64), snap_px=3.0, fb_px=1.5, drift_frames=1)
    assert dec.fb_err.tolist() == [1.5, 1.5] and not dec.consistent.any()
    assert dec.follow.tolist() == [True, False] and dec.candidate.tolist() == [False, True]
    assert dec.flow.dtype == np.float32 and dec.flow.tolist() == [[12.0, 10.0], [12.0, 10.0]]
