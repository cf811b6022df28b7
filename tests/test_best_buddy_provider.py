"""On-demand best buddies: the same entries as the precomputed stage, for every pair; bounded cache."""
import numpy as np
import pytest

from cosettle.backends.registry import load_backend
from tracker.preprocess.best_buddies import BestBuddyProvider
from tracker.config import PreprocessConfig
from tracker.preprocess.pipeline import preprocess_video


def clip(T=5, h=40, w=56):
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((h, w + 20, 3)) * 255).astype(np.uint8), (0, 0), 1.2)
    return np.stack([img[:, 3 * t: 3 * t + w] for t in range(T)])


@pytest.fixture(scope="module")
def preps(tmp_path_factory):
    backend = load_backend("dsift", patch_size=8, stride=4)
    base = dict(dis_preset="ultrafast", direct_window=3, traj_stride=2, bb_box=8)
    d = tmp_path_factory.mktemp("bb")
    full = preprocess_video(clip(), backend, PreprocessConfig(bb_max_pairs=0, **base), d, progress=False)
    lazy = preprocess_video(clip(), backend, PreprocessConfig(bb_on_demand=True, **base), d, progress=False)
    return full, lazy


def test_on_demand_equals_precomputed_for_every_pair(preps):
    full, lazy = preps
    T = 5
    assert isinstance(lazy.best_buddies, BestBuddyProvider) and lazy.stats["best_buddies"]["mode"] == "on_demand"
    assert len(full.best_buddies) == T * (T - 1) == len(lazy.best_buddies)
    n_kept = 0
    for s in range(T):
        for t in range(T):
            if s == t:
                assert (s, t) not in lazy.best_buddies and lazy.best_buddies.get((s, t)) is None
                continue
            assert (s, t) in lazy.best_buddies
            a, b = full.best_buddies[(s, t)], lazy.best_buddies.get((s, t))
            for k in ("src", "dst", "cos", "r"):
                np.testing.assert_array_equal(a[k], b[k])
            n_kept += len(a["cos"])
    assert n_kept > 0
    c = lazy.best_buddies.counters
    # 20 ordered requests = 10 unordered pairs computed once each + 10 served from the cache
    assert c["requested"] == 20 and c["computed"] == 10 and c["cache_hits"] == 10 and c["seconds"] > 0


def test_cache_is_bounded_and_window_limits_the_pairs(preps):
    _, lazy = preps
    p = BestBuddyProvider(lazy.features, lazy.geometry, lazy.best_buddies.near.store, box=8, window=2,
                          cache_pairs=2)
    assert len(p) == 2 * (4 + 3)  # |s - t| in {1, 2} over 5 frames, both orders
    assert (0, 3) not in p and p.get((0, 3)) is None and (1, 3) in p
    for pair in ((0, 1), (0, 2), (1, 2), (0, 1)):
        p.get(pair)
    assert len(p._cache) == 2 and p.counters["computed"] == 4  # (0, 1) was evicted, computed again
    ref = lazy.best_buddies.get((2, 0))
    np.testing.assert_array_equal(p.get((2, 0))["src"], ref["src"])
