"""Trajectory chaining on hand-made flows (exact answers) and on real DIS flows of a shifted texture."""
import numpy as np

from tracker.preprocess.flow import DISFlow, consecutive_flows
from tracker.preprocess.trajectories import chain_trajectories, trajectory_starts


def chain_dense(*a, **k):
    store, st = chain_trajectories(*a, **k)
    return store.dense(), st


def const_flows(T, h, w, dx, dy):
    fwd = np.zeros((T - 1, h, w, 2), np.float32)
    fwd[..., 0], fwd[..., 1] = dx, dy
    return fwd, -fwd


class ShiftEstimator:
    """Direct flow between 'frames' that are just their indices: k frames apart -> k * step (+ drift)."""

    name = "stub"

    def __init__(self, h, w, step, drift_region=None, drift=0.0):
        self.calls, self.h, self.w, self.step = 0, h, w, step
        self.drift_region, self.drift = drift_region, drift

    def __call__(self, a, b):
        self.calls += 1
        k = int(b) - int(a)
        f = np.zeros((self.h, self.w, 2), np.float32)
        f[..., 0] = k * self.step
        if self.drift_region is not None:
            # the direct pair disagrees with the chained flow by `drift` px there, but is itself
            # forward-backward consistent (so the filter trusts it); rows are unchanged by the motion
            f[self.drift_region + (0,)] += self.drift if k > 0 else -self.drift
        return f


def test_integer_shift_trajectories_follow_and_end_at_the_border():
    T, h, w = 5, 6, 10
    fwd, bwd = const_flows(T, h, w, 2.0, 0.0)
    traj, st = chain_dense(fwd, bwd, use_direct=False, fb_threshold=1.5)
    start = trajectory_starts(traj)
    first = traj[start == 0]
    assert len(first) == h * (w - 2)  # x = 8, 9 leave the image at once (length 1 < min_len 2)
    for tr in first:
        x0, y0 = tr[0]
        for t in range(T):
            x = x0 + 2 * t
            if x <= w - 1:
                assert tr[t, 0] == x and tr[t, 1] == y0
            else:  # left the image: trajectory ended for good
                assert np.isnan(tr[t:]).all()
                break
    # new tracks where frame s is uncovered: columns 0 and 1 of every later start frame
    for s in range(1, T - 1):
        xs = traj[start == s, s, 0]
        assert sorted(set(xs.tolist())) == [0.0, 1.0] and len(xs) == 2 * h


def test_fractional_shift_with_real_dis_flow():
    import cv2

    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur((rng.random((64, 96, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    frames = np.stack([cv2.warpAffine(img, np.float32([[1, 0, 1.5 * k], [0, 1, 0.5 * k]]), (96, 64),
                                      flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for k in range(4)])
    est = DISFlow("medium", finest_scale=0)
    fwd, bwd = consecutive_flows(frames, est)
    traj, st = chain_dense(fwd, bwd, frames, est, direct_window=3, stride=4)
    first = traj[trajectory_starts(traj) == 0]
    x0 = first[:, 0]
    inner = (x0[:, 0] > 12) & (x0[:, 0] < 60) & (x0[:, 1] > 12) & (x0[:, 1] < 44)
    assert inner.sum() > 50
    end = first[inner, 3]
    ok = np.isfinite(end[:, 0])
    assert ok.mean() > 0.9  # interior points survive the checks
    err = np.linalg.norm(end[ok] - (x0[inner][ok] + [4.5, 1.5]), axis=1)
    assert np.median(err) < 0.3, np.median(err)
    # stride-4 lattice seeds at frame 0
    assert np.all(x0 % 4 == 0)
    # direct flows counted: s=0: k=2,3; s=1: k=2 -> 3 pairs x 2 directions
    assert st.flow_calls == 6


def test_disappearing_region_ends_its_trajectories():
    T, h, w = 4, 8, 8
    fwd, bwd = const_flows(T, h, w, 0.0, 0.0)
    fwd[1, 2:5, 2:5] = (3.0, 0.0)  # frame 1 -> 2: this block "moves" but nothing maps back: gone
    traj, _ = chain_dense(fwd, bwd, use_direct=False)
    start = trajectory_starts(traj)
    first = traj[start == 0]
    gone = (first[:, 0, 0] >= 2) & (first[:, 0, 0] <= 4) & (first[:, 0, 1] >= 2) & (first[:, 0, 1] <= 4)
    assert gone.sum() == 9
    assert np.isfinite(first[gone, 1]).all() and np.isnan(first[gone, 2:]).all()
    assert np.isfinite(first[~gone]).all()  # everything else lives through all frames


def test_direct_filter_drops_drifting_points_within_the_window_only():
    T, h, w = 6, 6, 40
    fwd, bwd = const_flows(T, h, w, 1.0, 0.0)
    frames = np.arange(T)  # the stub estimator reads frame indices
    region = (slice(0, 3), slice(0, 40))  # rows 0..2: the direct flow disagrees by 4 px
    est = ShiftEstimator(h, w, 1.0, region, 4.0)
    traj, st = chain_dense(fwd, bwd, frames, est, direct_window=3, direct_threshold=2.5, stride=1)
    first = traj[trajectory_starts(traj) == 0]
    drift = (first[:, 0, 1] <= 2) & (first[:, 0, 0] < 30)  # x >= 34 - k: direct target outside -> unreliable
    # rows 0..2: killed at k = 2 (the first direct check), so valid at frames 0, 1 only
    assert np.isfinite(first[drift, 1]).all() and np.isnan(first[drift, 2:]).all()
    assert np.isfinite(first[(first[:, 0, 1] > 2) & (first[:, 0, 0] < 30), 5]).all()
    # without the filter they survive
    traj2, st2 = chain_dense(fwd, bwd, use_direct=False)
    first2 = traj2[trajectory_starts(traj2) == 0]
    assert np.isfinite(first2[(first2[:, 0, 1] <= 2) & (first2[:, 0, 0] < 30)]).all()
    assert st2.flow_calls == 0
    # direct flows only for k = 2..3 per start frame: s=0..3 have both, s=4 has neither (T-1-s = 1)
    assert st.flow_calls <= 2 * (2 + 2 + 2 + 1)
