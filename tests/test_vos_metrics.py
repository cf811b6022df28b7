"""DAVIS J and F (badja_eval/vos_metrics.py) on hand-made masks; every expected value is worked out by hand in
the comments (the DAVIS 2017 definitions: region IoU, boundary F with a disk of ceil(0.008 * diagonal) px)."""
import math

import numpy as np
import pytest

from badja_eval.vos_metrics import (bound_pixels, boundary_f, boundary_map, disk, frame_scores, object_ids,
                                    region_j, scored_frames, statistics, summarize)


def square(shift=0, size=40):
    m = np.zeros((size, size), bool)
    m[10:20, 10 + shift:20 + shift] = True  # rows 10..19, cols 10+shift..19+shift
    return m


def test_region_j_of_a_shifted_square():
    # 10x10 squares, one shifted 2 columns: intersection 10x8 = 80, union 100 + 100 - 80 = 120
    assert region_j(square(2), square(0)) == pytest.approx(80 / 120)


def test_region_j_empty_conventions():
    e = np.zeros((5, 5), bool)
    assert region_j(e, e) == 1.0  # both empty: 1 (DAVIS)
    assert region_j(e, square(size=30)[:5, :5] | True) == 0.0
    assert region_j(square(), square()) == 1.0


def test_boundary_map_of_a_square_is_the_ring_half_a_pixel_towards_the_origin():
    # a pixel is boundary when it differs from its right, lower or lower-right neighbour: inside the square that
    # is the last row (19) and column (19); outside, the row and column just before it (9): the ring of the
    # 11x11 square rows/cols 9..19, 4*11 - 4 = 40 pixels
    ring = np.zeros((40, 40), bool)
    ring[9:20, 9:20] = True
    ring[10:19, 10:19] = False
    b = boundary_map(square())
    assert b.sum() == 40
    assert (b == ring).all()


def test_boundary_map_last_row_and_column_rules():
    m = np.zeros((4, 4), bool)
    m[:, 2:] = True  # object touching the right and bottom borders
    b = boundary_map(m)
    # column 1 differs from its right neighbour in every row; column 3 (last) only compares with the pixel below:
    # same value, so no boundary; the last row compares with its right neighbour only
    assert b[:, 1].all() and not b[:, 3].any() and not b[:, 2].any() and not b[:, 0].any()


def test_disk_is_skimage_disk():
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]


def test_bound_pixels():
    assert bound_pixels((40, 40)) == 1  # 0.008 * 56.57 = 0.45 -> ceil 1
    assert bound_pixels((480, 854)) == 8  # 0.008 * 979.6 = 7.84 -> 8
    assert bound_pixels((480, 854), 3) == 3  # >= 1: pixels


def test_boundary_f_of_a_shifted_square():
    # rings: GT rows/cols 9..19; prediction shifted 2 right: left column c=11, right c=21 (rows 9..19, 11 px each),
    # top/bottom rows 9 and 19 at c=12..20 (9 px each). The GT ring dilated by the 3x3 cross covers: of the left
    # column only rows 9, 10, 18, 19 (next to the GT rows) -> 4; of the right column nothing (c=21 is 2 from
    # c=19) -> 0; the top and bottom rows wholly (c=20 touches (9,19)) -> 9 + 9. Precision 22/40; recall the
    # same by the mirrored count. F = 0.55.
    assert boundary_f(square(2), square(0)) == pytest.approx(0.55)
    assert boundary_f(square(0), square(0)) == 1.0


def test_boundary_f_with_a_wider_band_forgives_more():
    # bound_th=2 px: the 5x5 disk reaches c=21 from c=19 -> every pixel of either ring matches: F = 1
    assert boundary_f(square(2), square(0), bound_th=2) == 1.0


def test_boundary_f_empty_conventions():
    e = np.zeros((40, 40), bool)
    assert boundary_f(e, e) == 1.0  # no boundary anywhere: P = R = 1
    assert boundary_f(e, square()) == 0.0  # nothing predicted: P = 1, R = 0 -> F = 0
    assert boundary_f(square(), e) == 0.0  # P = 0, R = 1 -> F = 0


def test_frame_scores_per_object_and_void_is_background():
    gt = np.zeros((40, 40), np.uint8)
    gt[square()] = 1
    gt[30:35, 30:35] = 2
    gt[0:3, 0:3] = 255  # void
    pred = np.zeros_like(gt)
    pred[square()] = 1  # object 1 exact, object 2 missed
    pred[0:3, 0:3] = 0
    s = frame_scores(pred, gt, [1, 2])
    assert s[1] == (1.0, 1.0)
    assert s[2] == (0.0, 0.0)
    assert object_ids(gt) == [1, 2]  # 255 is not an object


def test_statistics_hand_computed():
    st = statistics([1.0, 0.0, 1.0, 0.4])
    assert st["mean"] == pytest.approx(0.6)
    assert st["recall"] == pytest.approx(0.5)  # 1.0 and 1.0 are > 0.5
    # bins from round(linspace(1, 4, 5) + 1e-10) - 1 = [0, 1, 2, 2, 3]: first [1, 0], last [1, 0.4]
    assert st["decay"] == pytest.approx(0.5 - 0.7)


def test_summary_is_the_mean_over_objects_not_sequences():
    per_obj = {"a_1": {"J": [1.0], "F": [0.5]}, "a_2": {"J": [0.0], "F": [0.5]}, "b_1": {"J": [1.0], "F": [1.0]}}
    s = summarize(per_obj)
    assert s["J"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3 objects; the mean over sequences would be 0.75
    assert s["F"] == pytest.approx(2 / 3)
    assert s["JF"] == pytest.approx(2 / 3)


def test_scored_frames_leave_out_the_first_and_last():
    assert list(scored_frames(5)) == [1, 2, 3]
    assert math.isnan(statistics([])["mean"])
