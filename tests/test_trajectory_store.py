"""Sparse trajectory store == dense (N, T, 2) form; streamed chaining == per-start-frame chaining."""
import numpy as np
import pytest

from tracker.preprocess.flow import DISFlow, consecutive_flows, step_points
from tracker.preprocess.trajectories import _direct_targets, chain_trajectories, consistency_masks
from tracker.preprocess.trajectory_store import TrajectoryStore, as_store


def hand_dense():
    """3 trajectories over 5 frames, written out by hand."""
    nan = np.nan
    d = np.full((3, 5, 2), nan, np.float32)
    d[0, 0:3] = [[1, 1], [2, 1], [3, 1]]            # frames 0..2
    d[1, 2:5] = [[5, 5], [5, 6], [5, 7]]            # frames 2..4
    d[2, 1:2] = [[9, 9]]                            # frame 1 only
    return d


def test_store_equals_dense_by_hand():
    st = TrajectoryStore.from_dense(hand_dense())
    assert st.starts.tolist() == [0, 2, 1] and st.lengths.tolist() == [3, 3, 1]
    assert st.shape == (3, 5, 2) and len(st.points) == 7
    np.testing.assert_array_equal(st.dense(), hand_dense())
    ids, xy = st.at_frame(2)
    assert ids.tolist() == [0, 1] and xy.tolist() == [[3, 1], [5, 5]]
    assert st.valid_at([0, 1, 2], [2, 2, 2]).tolist() == [True, True, False]
    out = st.xy(np.array([1, 0, 2]), np.array([4, 1, 3]))
    assert out[0].tolist() == [5, 7] and out[1].tolist() == [2, 1] and np.isnan(out[2]).all()
    np.testing.assert_array_equal(st.subset(np.array([False, True, True])).dense(), hand_dense()[1:])
    assert st.first_points().tolist() == [[1, 1], [5, 5], [9, 9]]


def test_two_intervals_are_refused():
    d = hand_dense()
    d[0, 4] = [0, 0]  # valid at 0..2 and again at 4
    with pytest.raises(ValueError, match="more than one interval"):
        TrajectoryStore.from_dense(d)


def test_save_load_roundtrip(tmp_path):
    st = as_store(hand_dense())
    st.save(tmp_path)
    back = TrajectoryStore.load(tmp_path)
    np.testing.assert_array_equal(back.dense(), hand_dense())
    assert back.num_frames == 5


def per_start_chaining(fwd, bwd, frames, est, fb, dthr, window, min_len, stride, direct):
    """The straightforward per-start-frame form (dense output): for every start frame s, seed the
    unoccupied or inconsistent lattice points and chain them to the end of the clip."""
    T = fwd.shape[0] + 1
    H, W = fwd.shape[1:3]
    cons = consistency_masks(fwd, bwd, fb)
    ly, lx = np.arange(0, H, stride), np.arange(0, W, stride)
    gx, gy = np.meshgrid(lx, ly)
    lattice = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    occupied = np.zeros((T, len(ly), len(lx)), bool)
    rows = []
    for s in range(T - 1):
        seed = np.ones(lattice.shape[0], bool) if s == 0 else (~occupied[s].ravel() | ~cons[s][ly][:, lx].ravel())
        p = lattice[seed]
        out = np.full((len(p), T, 2), np.nan, np.float32)
        out[:, s] = p
        alive = np.arange(len(p))
        for t in range(s, T - 1):
            if not len(alive):
                break
            c1, err, ins = step_points(out[alive, t], fwd[t], bwd[t])
            keep = (err < fb) & ins
            k = t + 1 - s
            if direct and 2 <= k <= window:
                target, rel = _direct_targets(frames, est, s, t + 1, p[alive], fb)
                keep &= ~rel | (np.linalg.norm(c1 - target, axis=1) < dthr)
            alive = alive[keep]
            out[alive, t + 1] = c1[keep]
        out = out[np.isfinite(out[:, :, 0]).sum(1) >= min_len]
        for k in range(s + 1, T):
            ok = np.isfinite(out[:, k, 0])
            ci = np.rint(out[ok, k] / stride).astype(int)
            g = (ci[:, 0] >= 0) & (ci[:, 0] < len(lx)) & (ci[:, 1] >= 0) & (ci[:, 1] < len(ly))
            occupied[k, ci[g, 1], ci[g, 0]] = True
        rows.append(out)
    return np.concatenate(rows)


@pytest.mark.parametrize("direct", [True, False])
def test_streamed_chaining_equals_per_start_chaining_on_real_flow(direct):
    import cv2

    rng = np.random.default_rng(3)
    bg = cv2.GaussianBlur((rng.random((48, 96, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    obj = cv2.GaussianBlur((rng.random((16, 16, 3)) * 255).astype(np.uint8), (0, 0), 1.0)
    frames = []
    for k in range(7):  # background pans right, an object moves left over it (occlusions, new seeds)
        f = np.roll(bg, 2 * k, axis=1)[:, :72].copy()
        x = 50 - 5 * k
        f[16:32, x:x + 16] = obj
        frames.append(f)
    frames = np.stack(frames)
    est = DISFlow("ultrafast")
    fwd, bwd = consecutive_flows(frames, est)
    kw = dict(fb_threshold=1.5, direct_threshold=2.5, direct_window=3, min_len=2, stride=2, use_direct=direct)
    est_a, est_b = DISFlow("ultrafast"), DISFlow("ultrafast")
    store, st = chain_trajectories(fwd, bwd, frames, est_a, **kw)
    ref = per_start_chaining(fwd, bwd, frames, est_b, 1.5, 2.5, 3, 2, 2, direct)
    assert len(ref) > 500 and (store.starts > 0).sum() > 20  # later start frames do seed
    np.testing.assert_array_equal(store.dense(), ref)
    assert est_a.calls == est_b.calls  # the same direct flows, each once
    assert sum(st.per_start) == len(store)
