"""Mask-based queries (cosettle/io/mask_queries.py): grid points only inside the mask, K points spread
over it and seeded, one-line errors for a wrong mask; and through scripts/track.py with a mid-clip query
frame (the flow tracker runs forwards and backwards from it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cosettle.errors import UserError
from cosettle.io.mask_queries import load_mask, mask_grid_queries, points_from_mask


def _l_shape(h=60, w=80):
    """An L: a vertical bar x 10..19, y 5..54 and a horizontal bar x 10..69, y 45..54 (concave)."""
    m = np.zeros((h, w), bool)
    m[5:55, 10:20] = True
    m[45:55, 10:70] = True
    return m


def _inside(mask, xy):
    xi, yi = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
    return mask[yi, xi]


def test_mask_grid_points_all_inside_and_none_missed():
    m = _l_shape()
    q = mask_grid_queries(m, 16, frame=3)
    assert len(q) > 0 and _inside(m, q.xy).all()
    assert (q.frames == 3).all()
    # every grid point of the full grid that falls in the mask is kept (cell centres of a 16 split)
    xs = (np.arange(16) + 0.5) * 80 / 16 - 0.5
    ys = (np.arange(16) + 0.5) * 60 / 16 - 0.5
    want = sum(m[int(round(y)), int(round(x))] for y in ys for x in xs)
    assert len(q) == want


def test_points_from_mask_inside_spread_and_seeded():
    m = _l_shape()
    q = points_from_mask(m, 12, frame=2, seed=7)
    assert len(q) == 12 and _inside(m, q.xy).all() and (q.frames == 2).all()
    assert len({tuple(p) for p in q.xy}) == 12                        # distinct pixels
    again = points_from_mask(m, 12, frame=2, seed=7)
    np.testing.assert_array_equal(q.xy, again.xy)                   # same seed, same points
    # spread: both arms of the L get points, and no two points sit on top of each other
    assert (q.xy[:, 0] > 30).sum() >= 3 and (q.xy[:, 1] < 40).sum() >= 3
    d = np.linalg.norm(q.xy[:, None] - q.xy[None], axis=-1) + np.eye(12) * 1e9
    assert d.min() >= 4


def test_mask_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="exceeds"):
        points_from_mask(np.pad(np.ones((1, 2), bool), 3), 5)
    with pytest.raises(UserError, match="not found"):
        load_mask(tmp_path / "nope.png", 10, 10)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(UserError, match="empty"):
        load_mask(tmp_path / "empty.png", 10, 12)
    with pytest.raises(UserError, match="10x12"):
        load_mask(tmp_path / "empty.png", 20, 12)
    # a palette / label mask (object = 1) counts as object; an 8-bit one is thresholded at 127
    Image.fromarray(np.eye(10, 12, dtype=np.uint8)).save(tmp_path / "label.png")
    assert load_mask(tmp_path / "label.png", 10, 12).sum() == 10
    soft = np.zeros((10, 12), np.uint8)
    soft[2, 2], soft[3, 3] = 255, 100                               # 100: JPEG ringing, not object
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert load_mask(tmp_path / "soft.png", 10, 12).sum() == 1


def test_cli_mask_grid_from_a_mid_clip_frame(tmp_path, capsys):
    """A moving square; the grid is restricted to its mask in frame 4 of 8; the flow tracker follows it
    forwards and backwards from there."""
    from tracker.commands.track import main

    h, w, t = 48, 64, 8
    rng = np.random.default_rng(0)
    bg = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    tex = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    vdir = tmp_path / "frames"
    vdir.mkdir()
    for k in range(t):
        f = bg.copy()
        f[16:32, 10 + 3 * k:26 + 3 * k] = tex
        Image.fromarray(f).save(vdir / f"{k:03d}.png")
    mask = np.zeros((h, w), np.uint8)
    mask[18:30, 24:36] = 255  # inside the square at frame 4 (x 22..37)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with pytest.raises(SystemExit) as ei:
        main(["--video", str(vdir), "--grid-size", "16", "--grid-mask", str(tmp_path / "mask.png"),
              "--query-frame", "4", "--tracker", "flow", "--out", str(tmp_path / "out"), "--quiet", "--json",
              "--no-overlay"])
    assert ei.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    data = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert summary["points"] == len(data["points"]) > 0
    for p in data["points"]:
        assert p["query"]["frame"] == 4 and mask[round(p["query"]["y"]), round(p["query"]["x"])]
        # backwards to frame 0 the square was 12 px further left
        assert p["x"][0] == pytest.approx(p["query"]["x"] - 12, abs=2.0)
        assert p["x"][7] == pytest.approx(p["query"]["x"] + 9, abs=2.0)


def test_cli_refuses_mask_without_grid(tmp_path, capsys):
    from tracker.commands.track import main

    with pytest.raises(SystemExit) as ei:
        main(["--grid-mask", "m.png", "--tracker", "static", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "--grid-mask needs --grid-size" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
