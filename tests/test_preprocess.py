"""preprocess_video on a tiny clip: shapes, the stage cache (hits, invalidation, kills), bad input."""
import numpy as np
import pytest

import tracker.preprocess.pipeline as pp
from cosettle.backends.registry import load_backend
from cosettle.errors import UserError
from tracker.config import PreprocessConfig
from tracker.preprocess.pipeline import STAGES, StageCache, preprocess_video, reference_flow_calls


def clip(T=4, h=40, w=56):
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((h, w + 16, 3)) * 255).astype(np.uint8), (0, 0), 1.2)
    return np.stack([img[:, 2 * t: 2 * t + w] for t in range(T)])  # content moves 2 px left per frame


@pytest.fixture(scope="module")
def backend():
    return load_backend("dsift", patch_size=8, stride=4)


def cfg(**kw):
    base = dict(dis_preset="ultrafast", direct_window=3, traj_stride=2, bb_max_pairs=3, bb_box=8)
    base.update(kw)
    return PreprocessConfig(**base)


def test_reference_flow_calls_are_the_specification_counts():
    """dino_tracker.md section 8 states the reference's RAFT calls as numbers: 196 consecutive + 2,450
    direct-filter = 2,646 at T = 50, and about 40.6k at T = 200."""
    assert reference_flow_calls(50) == 2646
    assert 40_550 <= reference_flow_calls(200) < 40_650
    # the 4-frame clip below, counted by hand: consecutive 3 pairs x 2 directions x 2 = 12 (the spec's
    # 2 * (T - 1) * 2), direct filter 6 pairs s < t x 2 directions = 12
    assert reference_flow_calls(4) == 24


def test_shapes_and_second_run_loads(tmp_path, backend):
    video = clip()
    pre = preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    g = pre.geometry
    T = 4
    assert pre.frames.shape == (T, g.input_h, g.input_w, 3) and pre.frames.dtype == np.uint8
    assert tuple(pre.features.shape) == (T, backend.feat_dim, g.grid_h, g.grid_w)
    assert pre.features.dtype.is_floating_point
    dense = pre.trajectories.dense()
    assert dense.ndim == 3 and dense.shape[1:] == (T, 2) and len(pre.trajectories)
    assert pre.traj_fg.shape == (len(pre.trajectories),)
    assert pre.masks.shape == (T, g.input_h, g.input_w) and pre.masks.dtype == bool
    assert len(pre.best_buddies) == 6 and all(s != t for s, t in pre.best_buddies)  # 3 pairs x 2 orders
    # interior trajectories from frame 0 move 2 px left per frame (the clip's motion)
    t0 = dense[np.isfinite(dense[:, 0, 0])]
    alive = np.isfinite(t0[:, 1, 0]) & (t0[:, 0, 0] > 10) & (t0[:, 0, 0] < 40)
    assert np.median(t0[alive, 1, 0] - t0[alive, 0, 0]) == pytest.approx(-2.0, abs=0.3)
    # counted flow calls: 2*(T-1) consecutive + direct (s=0: k=2,3; s=1: k=2) * 2 = 6 + 6
    assert pre.stats["flow_calls_total"] == 12
    assert pre.stats["flow_calls_reference"] == reference_flow_calls(T)
    assert not any(pre.stats[s]["cached"] for s in STAGES)
    # second run: everything loads, same results
    again = preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    assert all(again.stats[s]["cached"] for s in STAGES)
    np.testing.assert_array_equal(again.trajectories.dense(), dense)
    np.testing.assert_array_equal(again.masks, pre.masks)
    assert again.stats["flow_calls_total"] == 12  # recorded at compute time
    # changed settings: only the stages downstream of the change recompute
    changed = preprocess_video(video, backend, cfg(fb_threshold=1.0), tmp_path, progress=False)
    st = changed.stats
    assert st["frames"]["cached"] and st["features"]["cached"] and st["flows"]["cached"] and st["masks"]["cached"]
    assert not st["trajectories"]["cached"] and not st["best_buddies"]["cached"]
    # a changed video changes every key
    other = preprocess_video(video[::-1].copy(), backend, cfg(), tmp_path, progress=False)
    assert not other.stats["frames"]["cached"] and not other.stats["features"]["cached"]


def test_killed_stage_leaves_nothing_and_resumes(tmp_path, backend, monkeypatch):
    video = clip()

    def killed(*a, **k):
        # write something as a real stage would, then die
        raise KeyboardInterrupt

    real = pp.chain_trajectories
    monkeypatch.setattr(pp, "chain_trajectories", killed)
    with pytest.raises(KeyboardInterrupt):
        preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    names = [p.name for p in tmp_path.iterdir()]
    assert not any(n.startswith("trajectories") for n in names)
    assert not any(n.startswith(".tmp") for n in names)
    assert any(n.startswith("flows-") for n in names)  # finished stages stay
    monkeypatch.setattr(pp, "chain_trajectories", real)
    pre = preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    st = pre.stats
    assert st["flows"]["cached"] and st["features"]["cached"] and not st["trajectories"]["cached"]


def test_leftovers_of_a_sigkill_and_corrupt_files_are_handled(tmp_path, backend):
    video = clip()
    preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    stale = tmp_path / ".tmp-trajectories-deadbeef-999999999"
    stale.mkdir()
    (stale / "trajectories.npy").write_bytes(b"partial")
    traj_dir = next(tmp_path.glob("trajectories-*"))
    with open(traj_dir / "points.npy", "r+b") as fh:  # truncate: size check must fail
        fh.truncate(100)
    StageCache(tmp_path)
    assert not stale.exists()
    pre = preprocess_video(video, backend, cfg(), tmp_path, progress=False)
    assert not pre.stats["trajectories"]["cached"] and pre.stats["flows"]["cached"]


def test_failing_stage_is_named(tmp_path, backend, monkeypatch):
    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(pp.bbm, "compute_best_buddies", broken)
    with pytest.raises(RuntimeError, match="stage 'best_buddies' failed: ValueError: boom"):
        preprocess_video(clip(), backend, cfg(), tmp_path, progress=False)
    assert not list(tmp_path.glob("best_buddies-*"))


def test_user_masks_and_bad_masks(tmp_path, backend):
    video = clip()
    masks = np.zeros(video.shape[:3], bool)
    masks[:, 10:30, 20:40] = True
    pre = preprocess_video(video, backend, cfg(), tmp_path, masks=masks, progress=False)
    assert pre.stats["masks"]["source"] == "user"
    g = pre.geometry
    assert pre.masks[:, 15:25, 25:35].all() and not pre.masks[:, :5].any()
    assert pre.masks.shape == (4, g.input_h, g.input_w)
    with pytest.raises(UserError, match="3 masks for a video of 4 frames"):
        preprocess_video(video, backend, cfg(), tmp_path, masks=masks[:3], progress=False)
    with pytest.raises(UserError, match="masks are"):
        preprocess_video(video, backend, cfg(), tmp_path, masks=masks[:, :20], progress=False)
    with pytest.raises(UserError, match="at least 2 frames"):
        preprocess_video(video[:1], backend, cfg(), tmp_path, progress=False)


def test_mask_source_choice_is_in_the_masks_key(tmp_path, backend):
    video = clip()
    sal = preprocess_video(video, backend, cfg(mask_source="saliency"), tmp_path, progress=False)
    assert sal.stats["masks"]["source"] == "pca-saliency"
    mot = preprocess_video(video, backend, cfg(), tmp_path, progress=False)  # auto, no masks, not DINO: motion
    st = mot.stats
    assert st["masks"]["source"] == "motion" and not st["masks"]["cached"]
    assert not pp.is_dino_backend(backend)
    assert st["masks"]["key"] != sal.stats["masks"]["key"]
    assert st["flows"]["cached"] and st["trajectories"]["cached"]  # only the masks change
    assert mot.masks.shape == sal.masks.shape and 0 <= st["masks"]["fg_fraction"] <= 1
    # the whole clip translates: no independent motion, no foreground
    assert st["masks"]["fg_fraction"] < 0.05
    assert preprocess_video(video, backend, cfg(mask_source="motion"), tmp_path, progress=False).stats[
        "masks"]["cached"]
    with pytest.raises(UserError, match="unknown mask_source 'flow'"):
        preprocess_video(video, backend, cfg(mask_source="flow"), tmp_path, progress=False)
    with pytest.raises(UserError, match="no masks were given"):
        preprocess_video(video, backend, cfg(mask_source="user"), tmp_path, progress=False)


def test_odd_video_size_resizes_to_the_backend_grid(tmp_path, backend):
    video = clip(T=3, h=43, w=59)  # not a valid dsift input: snapped down to 40x56
    masks = np.zeros(video.shape[:3], bool)
    masks[:, 20:, :] = True
    pre = preprocess_video(video, backend, cfg(), tmp_path, masks=masks, progress=False)
    g = pre.geometry
    assert (g.image_h, g.image_w) == (43, 59) and (g.input_h, g.input_w) == (40, 56)
    assert pre.frames.shape == (3, 40, 56, 3) and pre.masks.shape == (3, 40, 56)
    # row 20 of 43 maps to input row (20.5 * 40/43) - 0.5 = 18.57: the mask edge moves with it
    assert not pre.masks[:, :18].any() and pre.masks[:, 19:].all()
    finite = pre.trajectories.points
    assert np.isfinite(finite).all() and finite.min() >= 0 and finite[:, 0].max() <= 55
