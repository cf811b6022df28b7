import numpy as np
import pytest
import torch

from cosettle.geometry import Geometry, snap_input_size


@pytest.mark.parametrize("patch,stride", [(14, 7), (14, 14), (16, 8), (16, 16)])
@pytest.mark.parametrize("hw", [(481, 853), (480, 854), (97, 131)])
def test_pixel_grid_round_trip(patch, stride, hw):
    h, w = hw
    ih, iw = snap_input_size(h, w, patch, stride)
    g = Geometry.for_input(patch, stride, ih, iw, h, w)
    rng = np.random.default_rng(0)
    xy = np.stack([rng.uniform(-0.5, w - 0.5, 100), rng.uniform(-0.5, h - 0.5, 100)], 1)
    np.testing.assert_allclose(g.grid_to_pixel(g.pixel_to_grid(xy)), xy, atol=1e-9)
    np.testing.assert_allclose(g.normalized_to_pixel(g.pixel_to_normalized(xy)), xy, atol=1e-9)
    # torch tensors go through the same maths
    t = torch.tensor(xy)
    np.testing.assert_allclose(g.pixel_to_grid(t).numpy(), g.pixel_to_grid(xy), atol=1e-9)


def test_dino_tracker_grid_at_476x854():
    # stride-7 grid of a /14 model at 476x854: 1 + (476-14)//7 = 67 rows, 1 + (854-14)//7 = 121 cols
    g = Geometry.for_input(14, 7, 476, 854, 476, 854)
    assert (g.grid_h, g.grid_w) == (67, 121)
    # cell (i, j) covers input pixels 7j .. 7j+13; its centre is 7j + 6.5 (pixel-centre convention)
    for i, j in [(0, 0), (10, 20), (66, 120)]:
        np.testing.assert_allclose(g.grid_to_pixel(np.array([j, i])), [7 * j + 6.5, 7 * i + 6.5])
    c = g.cell_centers()
    assert c.shape == (67, 121, 2)
    np.testing.assert_allclose(c[66, 120], [846.5, 468.5])


def test_480x854_video_maps_through_resize():
    h, w = snap_input_size(480, 854, 14, 7)
    assert (h, w) == (476, 854)  # DINO-Tracker's size, derived rather than hard-coded
    g = Geometry.for_input(14, 7, h, w, 480, 854)
    # centre of cell (0,0): input y = 6.5 -> image y = (6.5 + 0.5) * 480/476 - 0.5
    x, y = g.grid_to_pixel(np.array([0.0, 0.0]))
    assert x == pytest.approx(6.5)
    assert y == pytest.approx(7 * 480 / 476 - 0.5)


def test_snap_sizes():
    assert snap_input_size(480, 854, 14, 14) == (476, 854)
    assert snap_input_size(224, 224, 16, 16) == (224, 224)
    assert snap_input_size(481, 853, 14, 7) == (476, 847)
    assert snap_input_size(10, 100, 14, 7) == (0, 98)


def test_normalized_coordinates_hit_first_and_last_cell():
    g = Geometry.for_input(14, 7, 476, 854, 476, 854)
    first = g.grid_to_pixel(np.array([0.0, 0.0]))
    last = g.grid_to_pixel(np.array([120.0, 66.0]))
    np.testing.assert_allclose(g.pixel_to_normalized(first), [-1, -1])
    np.testing.assert_allclose(g.pixel_to_normalized(last), [1, 1])


def test_serialisation_round_trip():
    g = Geometry.for_input(16, 8, 96, 128, 100, 130)
    assert Geometry.from_dict(g.to_dict()) == g
