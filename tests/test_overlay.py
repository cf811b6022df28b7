"""The overlay (cosettle/io/overlay.py) on synthetic tracks drawn on a plain grey frame: the trail breaks
across a jump and the landing spot is marked, occluded points are hollow, markers grow with the frame,
the rainbow style colours by query position, and the still holds first / middle / last frame."""
from __future__ import annotations

import numpy as np
import pytest

from cosettle.io.overlay import draw_overlay_frames, overlay_still, still_indices, style_colors, trail_breaks
from cosettle.io.tracks import TrackResult

GREY = 60


def _clip(t=12, h=120, w=240):
    return np.full((t, h, w, 3), GREY, np.uint8)


def _result(tracks, visible=None, names=None):
    n, t = tracks.shape[:2]
    vis = np.ones((n, t), bool) if visible is None else visible
    return TrackResult(tracks, vis, np.where(vis, 0.9, 0.1), np.concatenate([np.zeros((n, 1)), tracks[:, 0]], 1),
                       names or [])


def _walk_with_jump(t=12, jump_at=6):
    """x = 20 + 2 px per frame along y = 60, plus a 150-px jump to the right at ``jump_at``."""
    tr = np.zeros((1, t, 2), np.float32)
    tr[0, :, 0] = 20 + 2 * np.arange(t)
    tr[0, :, 1] = 60
    tr[0, jump_at:, 0] += 150
    return tr


def test_trail_breaks_flag_the_jump_only():
    tr = _walk_with_jump()
    br = trail_breaks(tr, (120, 240))
    assert br.shape == (1, 12) and br[0].tolist() == [False] * 6 + [True] + [False] * 5
    # steady fast motion is motion, not a jump: 30 px every frame
    fast = np.zeros((1, 8, 2), np.float32)
    fast[0, :, 0] = 30 * np.arange(8)
    assert not trail_breaks(fast, (120, 240)).any()


def test_no_trail_segment_across_a_jump_and_the_redetection_is_marked():
    tr = _walk_with_jump()
    res = _result(tr)
    res.redetected = np.arange(12)[None] == 6  # the tracker reports the jump as a re-detection (issue 28)
    frames = list(draw_overlay_frames(_clip(), res, trail=10, style="trails"))
    f = frames[8]  # two frames after the jump, the trail reaches back over it
    # between the pre-jump position (x=30) and the landing (x=182), away from both markers' reach
    between = f[55:66, 60:150]
    assert (between == GREY).all(), "a trail line was drawn across the jump"
    # the step before the jump is ordinary motion: its trail segment is drawn (at x 24..30)
    assert (frames[5][58:63, 22:30] != GREY).any()
    # the re-detection mark: a square around the landing spot, wider than the disc itself
    r = max(3, round(120 / 80))
    x, y = int(tr[0, 8, 0]), 60
    ring = f[y - r - 4:y + r + 5, x - r - 4:x + r + 5]
    assert (ring[0] != GREY).any() and (ring[-1] != GREY).any()
    assert (ring[-1] != GREY).sum() > 2 * r  # the square's lower edge (labels go above a marker)
    # the mark lasts a few frames only: five frames after the jump the point is just its disc
    later = frames[11]
    x2 = int(tr[0, 11, 0])
    assert (later[y + r + 4, x2 - r - 4:x2 + r + 5] == GREY).all()


def test_occluded_is_hollow_visible_is_filled_and_markers_scale():
    tr = np.array([[[60.0, 60.0]] * 3, [[180.0, 60.0]] * 3], np.float32)
    vis = np.array([[True] * 3, [False] * 3])
    f = next(draw_overlay_frames(_clip(3), _result(tr, vis), style="rainbow"))
    assert (f[60, 60] != GREY).any()          # filled centre
    assert (f[60, 180] == GREY).all()         # hollow: the centre shows the frame
    big = next(draw_overlay_frames(_clip(1, 480, 854), _result(tr[:, :1] * 3, vis[:, :1]), style="rainbow"))
    def radius(img, x, y):
        row = (img[y, :, :] != GREY).any(-1)
        return int(row[x:].argmin())
    assert radius(big, 180, 180) > radius(f, 60, 60) >= 2


def test_names_are_drawn_and_styles_differ():
    tr = np.array([[[60.0, 60.0]] * 2], np.float32)
    plain = next(draw_overlay_frames(_clip(2), _result(tr, names=["nose"]), style="rainbow"))
    named = next(draw_overlay_frames(_clip(2), _result(tr, names=["nose"]), style="trails"))
    # the label sits right of / above the marker in the trails style only
    assert (named[35:58, 66:110] != GREY).any() and (plain[35:58, 66:110] == GREY).all()
    with pytest.raises(ValueError):
        next(draw_overlay_frames(_clip(2), _result(tr), style="bogus"))


def test_rainbow_colours_follow_the_query_rows():
    ys = np.array([10.0, 50.0, 90.0])
    tr = np.stack([np.stack([np.full(2, 100.0), np.full(2, y)], -1) for y in ys[::-1]]).astype(np.float32)
    res = _result(tr)
    cols = style_colors(res, "rainbow", (120, 240)).astype(float)
    import colorsys
    hues = [colorsys.rgb_to_hsv(*(c / 255))[0] for c in cols]
    # points listed bottom row first: hue rises with y, so the list's hues fall
    assert hues[0] > hues[1] > hues[2]


def test_still_holds_first_middle_last():
    assert still_indices(12) == [0, 5, 11] and still_indices(2) == [0, 1] and still_indices(1) == [0]
    tr = _walk_with_jump()
    still = overlay_still(_clip(), _result(tr, names=["nose"]), style="rainbow")
    assert still.shape == (120, 3 * 240 + 2 * 4, 3)
    withlegend = overlay_still(_clip(), _result(tr, names=["nose"]), style="trails")
    assert withlegend.shape[0] > 120 and withlegend.shape[1] == still.shape[1]


def test_hollow_follows_visibility_and_confidence_separately():
    """Visibility and confidence given independently (not tied as in ``_result``): filled only when visible AND
    confidence >= 0.5. Points: visible 0.3 (uncertain: hollow), visible 0.5 (the boundary: filled), visible
    0.7 (filled), not visible 0.9 (occluded although confident: hollow)."""
    xs = [40.0, 90.0, 140.0, 190.0]
    tr = np.array([[[x, 60.0]] for x in xs], np.float32)
    vis = np.array([[True], [True], [True], [False]])
    conf = np.array([[0.3], [0.5], [0.7], [0.9]], np.float32)
    res = TrackResult(tr, vis, conf, np.concatenate([np.zeros((4, 1)), tr[:, 0]], 1), [])
    f = next(draw_overlay_frames(_clip(1), res, style="rainbow"))
    centre_drawn = [bool((f[60, int(x)] != GREY).any()) for x in xs]
    assert centre_drawn == [False, True, True, False]
    # every point has a marker (a ring at least): hollow is not "not drawn"
    r = max(3, round(120 / 80))
    assert all((f[60 - r - 1:60 + r + 2, int(x) - r - 1:int(x) + r + 2] != GREY).any() for x in xs)
