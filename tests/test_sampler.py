"""What the trajectory sampler draws: valid frames, the FG/BG split, separate frame draws, seeding."""
import itertools

import numpy as np
import pytest

from tracker.dino.sampler import TrajectorySampler
from tracker.preprocess.trajectory_store import TrajectoryStore

T = 50


def interval_store(n=600, seed=0):
    """n trajectories on known intervals; trajectory i at frame f sits at (i, f) (so a point names
    its own trajectory and frame)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, T - 2, n)
    lengths = np.minimum(rng.integers(2, 30, n), T - starts)
    pts = np.concatenate([np.stack([np.full(l, i), np.arange(s, s + l)], 1) for i, (s, l) in
                          enumerate(zip(starts, lengths))]).astype(np.float32)
    fg = np.arange(n) % 3 == 0
    return TrajectoryStore(starts, lengths, pts, T), fg


def full_store(n=400):
    """Every trajectory valid on every frame (any frame draw is usable by all)."""
    pts = np.stack([np.repeat(np.arange(n), T), np.tile(np.arange(T), n)], 1).astype(np.float32)
    return TrajectoryStore(np.zeros(n), np.full(n, T), pts, T), np.arange(n) < n // 2


@pytest.mark.parametrize("separate", [False, True])
def test_drawn_pairs_are_valid_frames_of_their_trajectory(separate):
    store, fg = interval_store()
    s = TrajectorySampler(store, fg, 64, 0.5, 4, separate_frames=separate)
    rng = np.random.default_rng(5)
    for _ in range(30):
        b = s.sample(rng)
        ts, tt = b.frames[b.src_fi], b.frames[b.tgt_fi]
        assert (ts != tt).all()
        assert store.valid_at(b.traj, ts).all() and store.valid_at(b.traj, tt).all()
        # the point is the trajectory's own point at that frame (x = id, y = frame by construction)
        assert (b.src_xy[:, 0] == b.traj).all() and (b.src_xy[:, 1] == ts).all()
        assert (b.tgt_xy[:, 0] == b.traj).all() and (b.tgt_xy[:, 1] == tt).all()
        assert len(np.unique(b.traj)) == len(b.traj)  # without replacement
        assert (np.diff(b.frames) > 0).all() and len(b.frames) <= (8 if separate else 4)
        assert (fg[b.traj] == b.is_fg).all()


def test_fg_bg_ratio_is_exact_when_both_pools_suffice():
    store, fg = full_store()
    for ratio, want in ((0.5, 32), (0.7, 45), (0.25, 16)):
        s = TrajectorySampler(store, fg, 64, ratio, 4)
        b = s.sample(np.random.default_rng(0))
        assert b.is_fg.sum() == want and len(b.traj) == 64  # round(64 * ratio)


def test_separate_draws_give_independent_frame_sets():
    store, fg = full_store()
    shared = TrajectorySampler(store, fg, 256, 0.5, 4, separate_frames=False)
    sep = TrajectorySampler(store, fg, 256, 0.5, 4, separate_frames=True)
    rng = np.random.default_rng(1)
    n_frames, overlap = [], []
    for _ in range(400):
        b = shared.sample(rng)
        assert len(b.frames) == 4  # 256 trajectories valid everywhere use all 4 frames
        f_fg = set(b.frames[np.r_[b.src_fi[b.is_fg], b.tgt_fi[b.is_fg]]])
        f_bg = set(b.frames[np.r_[b.src_fi[~b.is_fg], b.tgt_fi[~b.is_fg]]])
        assert f_fg == f_bg
        b = sep.sample(rng)
        f_fg = set(b.frames[np.r_[b.src_fi[b.is_fg], b.tgt_fi[b.is_fg]]].tolist())
        f_bg = set(b.frames[np.r_[b.src_fi[~b.is_fg], b.tgt_fi[~b.is_fg]]].tolist())
        assert len(f_fg) == 4 and len(f_bg) == 4 and f_fg | f_bg == set(b.frames.tolist())
        n_frames.append(len(b.frames))
        overlap.append(len(f_fg & f_bg))
    # two independent 4-of-50 draws share 4 * 4 / 50 = 0.32 frames on average (hypergeometric);
    # the standard error over 400 draws is ~0.027
    assert abs(np.mean(overlap) - 0.32) < 0.12, np.mean(overlap)
    assert np.mean(n_frames) == pytest.approx(8 - np.mean(overlap))
    assert np.mean(np.array(n_frames) >= 7) > 0.95


def test_same_seed_same_batches_and_dense_input_equals_the_store():
    store, fg = interval_store()
    a = TrajectorySampler(store, fg, 64, 0.5, 4, separate_frames=True)
    b = TrajectorySampler(store.dense(), fg, 64, 0.5, 4, separate_frames=True)
    ra, rb, rc = np.random.default_rng(9), np.random.default_rng(9), np.random.default_rng(10)
    for _ in range(5):
        x, y, z = a.sample(ra), b.sample(rb), a.sample(rc)
        for f in ("frames", "src_fi", "tgt_fi", "src_xy", "tgt_xy", "traj"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert not np.array_equal(x.traj, z.traj)


def test_short_trajectories_are_never_drawn():
    store1 = TrajectoryStore([0, 5, 7, 9], [2, 3, 3, 1], np.zeros((9, 2)), 10)
    s = TrajectorySampler(store1, None, 8, 0.5, 4)
    assert s.ids.tolist() == [0, 1, 2]  # the 1-frame trajectory is dropped
    # One try succeeds when its 4-of-10 frame draw leaves >= 2 trajectories with >= 2 valid frames.
    # Counted here over all C(10, 4) = 210 draws (independently of the sampler): 31 succeed.
    intervals = [(0, 2), (5, 8), (7, 10)]  # [start, end) of the three usable trajectories
    good = sum(sum(sum(a <= f < e for f in c) >= 2 for a, e in intervals) >= 2
               for c in itertools.combinations(range(10), 4))
    assert good == 31
    p, n = good / 210, 2000
    rng = np.random.default_rng(0)
    succeeded = 0
    for _ in range(n):
        try:
            b = s.sample(rng, max_tries=1)
        except RuntimeError:
            continue
        succeeded += 1
        assert 3 not in b.traj and len(b.traj) >= 2
        assert store1.valid_at(b.traj, b.frames[b.src_fi]).all() and store1.valid_at(b.traj, b.frames[b.tgt_fi]).all()
    # binomial(2000, 0.148): standard error 0.0079; 5 of them
    assert abs(succeeded / n - p) < 5 * np.sqrt(p * (1 - p) / n), succeeded / n
    # with 300 tries a batch always comes (all 300 fail with probability 0.852^300 < 1e-20)
    for _ in range(50):
        assert set(s.sample(rng, max_tries=300).traj.tolist()) <= {0, 1, 2}
    # no 2-frame draw covers both [0, 2) and [8, 10): the sampler must say so, never return a batch
    never = TrajectorySampler(TrajectoryStore([0, 8], [2, 2], np.zeros((4, 2)), 10), None, 8, 0.5, 2)
    with pytest.raises(RuntimeError, match="no frame draw"):
        never.sample(rng, max_tries=100)


def test_frame_stride_draws_only_strided_frames():
    store, fg = full_store()
    s = TrajectorySampler(store, fg, 64, 0.5, 4, separate_frames=True, frame_stride=5)
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(100):
        seen |= set(s.sample(rng).frames.tolist())
    assert seen <= set(range(0, T, 5)) and len(seen) == 10  # all of 0, 5, ..., 45 and nothing else
