"""Foreground masks: user-mask checks, PCA saliency with a deterministic sign, motion masks, PNG round trip."""
import numpy as np
import pytest
import torch

from cosettle.errors import UserError
from cosettle.geometry import Geometry
from cosettle.io.masks import load_mask_folder
from tracker.preprocess.masks import (check_masks, motion_masks, resize_masks, saliency_masks,
                           save_masks_png, trajectory_foreground)


def object_features(T=3, h=6, w=8, C=16, seed=0, scale=1.0):
    """Background cells ~ direction A, a 2x3 'object' block ~ direction B (+ small noise)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.zeros(C), torch.zeros(C)
    a[0], b[1] = 1.0, 1.0
    f = a.view(1, C, 1, 1).repeat(T, 1, h, w)
    f[:, :, 2:4, 3:6] = b.view(1, C, 1, 1)
    return scale * (f + 0.05 * torch.randn(f.shape, generator=g))


def geom(h=6, w=8):
    return Geometry.for_input(4, 4, 4 * h, 4 * w, 4 * h, 4 * w)  # cell (i, j) covers a 4x4 block


def test_pca_saliency_finds_the_object_and_its_sign_is_fixed():
    f = object_features()
    g = geom()
    want = np.zeros((3, 24, 32), bool)
    want[:, 8:16, 12:24] = True  # cells rows 2..3, cols 3..5
    m1, info1 = saliency_masks(f, g)
    np.testing.assert_array_equal(m1, want)
    # flipping every feature flips PC1; the border rule must give the same masks
    m2, info2 = saliency_masks(-f, g)
    np.testing.assert_array_equal(m2, want)
    # another noise draw / run: identical decision
    m3, _ = saliency_masks(object_features(seed=5, scale=3.0), g)
    np.testing.assert_array_equal(m3, want)


def test_user_mask_checks():
    m = np.zeros((4, 10, 12), np.uint8)
    m[:, 2:5, 3:7] = 255
    out = check_masks(m, 4, 10, 12)
    assert out.dtype == bool and out.sum() == 4 * 12
    with pytest.raises(UserError, match="3 masks for a video of 4 frames"):
        check_masks(m[:3], 4, 10, 12)
    with pytest.raises(UserError, match=r"masks are 10x12 \(HxW\), the video is 11x12"):
        check_masks(m, 4, 11, 12)


def test_png_round_trip_and_folder_checks(tmp_path):
    import imageio.v3 as iio

    m = np.zeros((3, 10, 12), bool)
    m[1, 4:6, 5:9] = True
    folder = save_masks_png(tmp_path / "masks", m)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    raw = iio.imread(files[1])
    assert set(np.unique(raw).tolist()) == {0, 255}  # lossless 0/255, no JPEG ringing
    np.testing.assert_array_equal(load_mask_folder(folder, 3, 10, 12), m)
    with pytest.raises(UserError, match="has 3 images, the video 4 frames"):
        load_mask_folder(folder, 4, 10, 12)
    with pytest.raises(UserError, match=r"is 10x12 \(HxW\), the video is 20x12"):
        load_mask_folder(folder, 3, 20, 12)


def test_resize_and_trajectory_foreground():
    m = np.zeros((2, 4, 4), bool)
    m[:, :2, :2] = True
    big = resize_masks(m, 8, 8)
    assert big[:, :4, :4].all() and not big[:, 4:].any() and not big[:, :, 4:].any()
    nan = np.nan
    traj = np.array([[[1, 1], [2, 2]],          # starts at frame 0 on (1,1): fg
                     [[nan, nan], [1, 1]],      # starts at frame 1 on (1,1): fg
                     [[3, 3], [3, 3]]], np.float32)  # bg
    assert trajectory_foreground(traj, m).tolist() == [True, True, False]


def moving_square_clip(T=5, h=56, w=72, shift=(2, 1), move=(-3, 2), side=16, seed=0):
    """Textured background translating by ``shift`` px/frame + a textured square moving by ``move``."""
    import cv2

    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur((rng.random((h + 40, w + 40, 3)) * 255).astype(np.uint8), (0, 0), 1.5)
    sq = cv2.GaussianBlur((rng.random((side, side, 3)) * 255).astype(np.uint8), (0, 0), 1.0)
    frames, truth = [], np.zeros((T, h, w), bool)
    for t in range(T):
        x0, y0 = 20 - shift[0] * t, 20 - shift[1] * t  # the camera pans: content moves by +shift
        f = bg[y0:y0 + h, x0:x0 + w].copy()
        sx, sy = 36 + move[0] * t, 14 + move[1] * t
        f[sy:sy + side, sx:sx + side] = sq
        truth[t, sy:sy + side, sx:sx + side] = True
        frames.append(f)
    return np.stack(frames), truth


def test_motion_masks_find_the_moving_square_and_are_deterministic():
    from tracker.preprocess.flow import consecutive_flows, make_flow_estimator

    frames, truth = moving_square_clip()
    fwd, bwd = consecutive_flows(frames, make_flow_estimator("dis", "medium", None, "cpu", 0), progress=False)
    m, info = motion_masks(fwd, bwd)
    assert m.shape == truth.shape and m.dtype == bool
    cover = (m & truth).sum((1, 2)) / truth.sum((1, 2))
    false_pos = (m & ~truth).sum((1, 2)) / (~truth).sum((1, 2))
    # every frame, the last one (backward flow only) included; DIS is noisy on a 72x56 clip
    assert cover.min() >= 0.5 and cover.mean() >= 0.85, cover
    assert false_pos.max() <= 0.08, false_pos
    assert info["fg_fraction"] == pytest.approx(m.mean()) and info["model_failures"] == 0
    again, _ = motion_masks(fwd.copy(), bwd.copy())
    np.testing.assert_array_equal(again, m)
    # no independent motion: nothing is foreground
    still, _ = motion_masks(np.full_like(fwd, 1.5), np.full_like(bwd, -1.5))
    assert not still.any()


def _slow_square_flows(T=9, h=120, w=160, side=40, speed=0.4):
    """Exact flows of a static camera and a side x side square at (60, 40) moving ``speed`` px/frame to
    the right: fwd[t] carries it by +speed, bwd[t] by -speed; the background does not move."""
    fwd = np.zeros((T - 1, h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    truth = np.zeros((T, h, w), bool)
    for t in range(T):
        x0 = int(round(60 + speed * t))
        truth[t, 40:40 + side, x0:x0 + side] = True
    for t in range(T - 1):
        fwd[t][truth[t]] = (speed, 0.0)
        bwd[t][truth[t + 1]] = (-speed, 0.0)
    return fwd, bwd, truth


def test_motion_masks_with_exact_flows_cover_the_square_but_its_corners():
    """Exact flows of moving_square_clip's motion (background (2, 1), square (-3, 2)): the residual is 0
    on the background and 5.1 px on the square, far above both thresholds, so every square pixel is
    foreground before the clean-up. The 3x3 elliptical kernel is a cross: opening removes the square's 4
    corner pixels and closing does not restore them -> coverage exactly (256 - 4) / 256 in every frame,
    no false positive."""
    frames, truth = moving_square_clip()
    T, h, w = truth.shape
    fwd = np.zeros((T - 1, h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    fwd[...] = (2.0, 1.0)
    bwd[...] = (-2.0, -1.0)
    for t in range(T - 1):
        fwd[t][truth[t]] = (-3.0, 2.0)
        bwd[t][truth[t + 1]] = (3.0, -2.0)
    m, info = motion_masks(fwd, bwd, window=1)
    assert info["kernel"] == 3
    cover = (m & truth).sum((1, 2)) / truth.sum((1, 2))
    np.testing.assert_array_equal(cover, np.full(T, 252 / 256))
    assert not (m & ~truth).any()


def test_slow_mover_needs_the_chained_window_and_the_default_finds_it():
    """A square moving 0.4 px/frame on a 160x120 frame: the per-pair residual (0.4 px) is under the
    floor of 0.5 % of the diagonal (1.0 px), so consecutive pairs find nothing (the cows / bear case);
    over 4 frames it is 1.6 px. The default doubles the window while the foreground is under 5 % and
    stops at 4 (the square is 8.3 % of the frame). Lost at most: the 4 corners and the two columns
    where bilinear sampling mixes square and background flow (<= 84 of 1600 pixels). Gained at most:
    background that the square covers within the window ahead (forward chain) or uncovered within the
    window behind (backward chain), ceil(0.4 * 4) = 2 columns of 40 rows on each side."""
    fwd, bwd, truth = _slow_square_flows()
    none, info1 = motion_masks(fwd, bwd, window=1)
    assert info1["min_residual_px"] == pytest.approx(0.005 * np.hypot(120, 160)) and not none.any()
    m, info = motion_masks(fwd, bwd)
    assert info["window"] == 4
    cover = (m & truth).sum((1, 2)) / truth.sum((1, 2))
    assert cover.min() >= 1 - 84 / 1600, cover
    assert (m & ~truth).sum((1, 2)).max() <= 2 * 2 * 40


def test_empty_automatic_masks_warn_naming_masks(caplog):
    """No independent motion at all: one warning naming --masks (the CLI test checks the line reaches
    the user); a mask covering most of the frame warns too."""
    import logging

    fwd, bwd, _ = _slow_square_flows(speed=0.0)
    with caplog.at_level(logging.WARNING, logger="tracker.preprocess.masks"):
        m, info = motion_masks(fwd, bwd)
    assert not m.any() and info["window"] == 8
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "--masks" in warn[0] and "0.0%" in warn[0]


def test_points_on_mask_nearest_pixel_and_outside_is_off():
    from tracker.preprocess.masks import points_on_mask

    m = np.zeros((4, 5), bool)
    m[1, 2] = True
    xy = np.array([[2.0, 1.0], [2.4, 0.6], [2.6, 1.0], [-0.4, 0.0], [4.6, 1.0], [2.0, 3.6]])
    # on / rounds to (2, 1) / rounds to (3, 1) / rounds to 0 but is on the frame's edge pixel (0, 0) (off)
    # / rounds to x = 5, outside / rounds to y = 4, outside
    assert points_on_mask(m, xy).tolist() == [True, True, False, False, False, False]


def _two_sided_flows(h=60, w=100, moving=20.0):
    """3 frames. Forward flows move the left 45 columns by `moving` px (the rest, 55 %, is still: the fitted
    background motion is the identity); backward flows move the right 45 columns. Frame 0 sees only the
    forward flow (left 45 % foreground), frame 2 only the backward one (right 45 %), frame 1 both: its
    averaged residual (20 px / the 0.58 px floor, halved) marks left and right, 90 %. Masks: 60 % of all
    pixels, (45 + 90 + 45) / 3 -- regions touch the frame's edges, so opening and closing keep them exactly."""
    fwd = np.zeros((2, h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    fwd[:, :, :45, 0] = moving
    bwd[:, :, 55:, 0] = -moving
    truth = np.zeros((3, h, w), bool)
    truth[0, :, :45] = truth[1, :, :45] = True
    truth[1, :, 55:] = truth[2, :, 55:] = True
    return fwd, bwd, truth


def test_masks_covering_most_of_the_frame_warn_once_naming_masks(caplog):
    """Motion masks over 50 % of the frame do not isolate an object: one warning naming --masks with the
    share; 45 % (one side only) is plausible and gives none."""
    import logging

    fwd, bwd, truth = _two_sided_flows()
    with caplog.at_level(logging.WARNING, logger="tracker.preprocess.masks"):
        m, info = motion_masks(fwd, bwd)
    np.testing.assert_array_equal(m, truth)
    assert info["fg_fraction"] == pytest.approx(0.6) and info["window"] == 1
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1, warn
    assert "motion masks cover 60% of the frame -- they do not isolate the object" in warn[0]
    assert "--masks" in warn[0]
    caplog.clear()
    fwd[:] = 0.0  # backward motion only: frames 1 and 2 hold the right 45 %, frame 0 nothing -> 30 %
    with caplog.at_level(logging.WARNING, logger="tracker.preprocess.masks"):
        m, info = motion_masks(fwd, bwd)
    assert info["fg_fraction"] == pytest.approx(0.3)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("share, words", [(0.019, "cover only 1.9%"), (0.02, None), (0.5, None),
                                          (0.51, "cover 51% of the frame")])
def test_coverage_warning_bounds(caplog, share, words):
    """The two limits: below 2 % (MIN_AUTO_FG) and above 50 %; exactly at either, no warning."""
    import logging

    from tracker.preprocess.masks import warn_mask_coverage

    with caplog.at_level(logging.WARNING, logger="tracker.preprocess.masks"):
        warn_mask_coverage("motion", share)
    got = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (got == []) if words is None else (len(got) == 1 and words in got[0] and "--masks" in got[0]), got
