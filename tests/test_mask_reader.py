"""The one mask reader (cosettle/io/masks.py): its rule on every image kind, hand-made pixel by pixel, and the folder
contract (one image per source frame, sorted names, frame subsets)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cosettle.errors import UserError
from cosettle.io.masks import foreground, load_mask_folder, mask_files, read_mask
from tracker.preprocess.masks import check_masks


def _save(path, arr, mode=None, **kw):
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(path, **kw)
    return path


def test_8bit_masks_threshold_at_127(tmp_path):
    a = np.array([[0, 127, 128, 255]], np.uint8)
    assert read_mask(_save(tmp_path / "m.png", a)).tolist() == [[False, False, True, True]]


def test_0_1_label_masks_count_every_nonzero_pixel(tmp_path):
    a = np.array([[0, 1, 1, 0]], np.uint8)
    assert read_mask(_save(tmp_path / "m.png", a)).tolist() == [[False, True, True, False]]


def test_rgb_takes_the_brightest_channel_and_ignores_alpha(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (0, 200, 0, 0)      # green object, fully transparent: still foreground
    rgba[0, 1] = (100, 100, 100, 255)  # grey 100 < 127 while another pixel is > 127: background
    rgba[0, 2] = (0, 0, 0, 255)
    assert read_mask(_save(tmp_path / "m.png", rgba)).tolist() == [[True, False, False]]


def test_palette_masks_use_the_index_not_the_colour(tmp_path):
    idx = np.array([[0, 1, 200, 0]], np.uint8)  # object 1 counts although another index exceeds 127
    im = Image.fromarray(idx, "P")
    im.putpalette([0] * (256 * 3))  # every object drawn black: the colours do not decide
    im.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[False, True, True, False]]


def test_one_bit_and_jpeg_masks(tmp_path):
    Image.fromarray(np.array([[0, 1, 0]], bool)).save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").tolist() == [[False, True, False]]
    big = np.zeros((32, 32), np.uint8)
    big[5:19, 7:21] = 255  # not on the 8x8 JPEG blocks: ringing around the edges
    Image.fromarray(big).save(tmp_path / "m.jpg", quality=60)
    got = read_mask(tmp_path / "m.jpg")
    raw = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert ((raw > 0) & (raw <= 127) & ~big.astype(bool)).any()  # ringing exists outside the square ...
    np.testing.assert_array_equal(got, big > 0)                    # ... and does not count


def test_arrays_follow_the_same_rule():
    assert foreground(np.array([[0, 3, 200]], np.uint8)).tolist() == [[False, False, True]]
    assert foreground(np.array([[0, 3]], np.uint8)).tolist() == [[False, True]]
    assert foreground(np.array([[True, False]])).tolist() == [[True, False]]
    # a clip 3 or 4 pixels wide is not an RGB(A) image: the width is kept
    narrow = np.zeros((2, 5, 3), np.uint8)
    narrow[:, 1, 2] = 255
    assert check_masks(narrow, 2, 5, 3).tolist() == (narrow > 0).tolist()


def test_unreadable_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"--masks .*x\.png is not a readable image"):
        read_mask(tmp_path / "x.png", "--masks")
    with pytest.raises(UserError, match="file not found"):
        read_mask(tmp_path / "nope.png")


def test_folder_one_image_per_source_frame_by_sorted_name(tmp_path):
    for i in range(4):
        a = np.zeros((2, 3), np.uint8)
        a[0, i % 3] = 255
        _save(tmp_path / f"{i:05d}.png", a)
    (tmp_path / ".hidden.png").write_bytes(b"junk")   # ignored
    (tmp_path / "notes.txt").write_text("ignored")
    all4 = load_mask_folder(tmp_path, 4, 2, 3)
    assert all4.shape == (4, 2, 3) and [int(np.argmax(m[0])) for m in all4] == [0, 1, 2, 0]
    sub = load_mask_folder(tmp_path, [1, 3], 2, 3)     # --frame-stride 2 from frame 1
    np.testing.assert_array_equal(sub, all4[[1, 3]])
    with pytest.raises(UserError, match="has 4 images, the video 5 frames"):
        load_mask_folder(tmp_path, 5, 2, 3)
    with pytest.raises(UserError, match=r"is 2x3 \(HxW\), the video is 2x4"):
        load_mask_folder(tmp_path, 2, 2, 4)
    with pytest.raises(UserError, match="folder not found"):
        load_mask_folder(tmp_path / "none", 1, 2, 3)


def _one_pixel_png(path, mode):
    """An 8x8 PNG of ``mode``, built pixel by pixel: background everywhere (opaque where there is alpha), one
    object pixel at (row 2, column 5). Returns the mode PIL reads back (the test must test what it claims)."""
    g = np.zeros((8, 8), np.uint8)
    g[2, 5] = 255
    if mode == "L":
        im = Image.fromarray(g, "L")
    elif mode == "LA":  # grey + alpha: alpha 255 everywhere, brighter than any object value would need
        im = Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), "LA")
    elif mode == "P":
        im = Image.fromarray((g > 0).astype(np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    elif mode == "RGB":
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[2, 5] = (0, 0, 255)  # blue only: the brightest channel decides
        im = Image.fromarray(rgb, "RGB")
    elif mode == "RGBA":
        rgba = np.zeros((8, 8, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[2, 5] = (255, 0, 0, 255)
        im = Image.fromarray(rgba, "RGBA")
    elif mode == "I;16":  # 16-bit grey, object 65535
        im = Image.fromarray(g.astype(np.uint16) * 257)
    im.save(path)
    with Image.open(path) as back:
        return back.mode


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_every_png_mode_one_object_pixel_is_one_foreground_pixel(tmp_path, mode):
    """(Issue 29: an LA mask read alpha as a colour channel -> 64 of 64 pixels foreground.)"""
    read_back = _one_pixel_png(tmp_path / "m.png", mode)
    assert read_back == mode
    got = read_mask(tmp_path / "m.png")
    want = np.zeros((8, 8), bool)
    want[2, 5] = True
    assert got.shape == (8, 8) and int(got.sum()) == 1
    np.testing.assert_array_equal(got, want)


def test_la_mask_with_transparent_object_and_opaque_background(tmp_path):
    """Alpha never decides, whichever way it goes: grey 200 object with alpha 0, grey 0 background with alpha 255."""
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 1] = 255
    la[1, 1] = (200, 0)
    Image.fromarray(la, "LA").save(tmp_path / "m.png")
    assert np.argwhere(read_mask(tmp_path / "m.png")).tolist() == [[1, 1]]


def test_threshold_switch_is_strictly_above_127():
    """The > 127 threshold applies only when some value exceeds 127: max 127 -> 0/1-label rule (> 0), max 128
    -> the 8-bit rule (> 127). (Mutation testing: '>= 127' and '> 128' survived.)"""
    assert foreground(np.array([[0, 1, 127]], np.uint8)).tolist() == [[False, True, True]]
    assert foreground(np.array([[0, 1, 128]], np.uint8)).tolist() == [[False, False, True]]


def test_empty_frame_list_and_bool_dtype(tmp_path):
    """No frames asked: an empty (0, H, W) bool array, even from an empty folder; masks are bool."""
    (tmp_path / "empty").mkdir()
    got = load_mask_folder(tmp_path / "empty", 0, 2, 3)
    assert got.shape == (0, 2, 3) and got.dtype == bool
    (tmp_path / "one").mkdir()
    _save(tmp_path / "one" / "00000.png", np.array([[0, 255, 0], [0, 0, 0]], np.uint8))
    one = load_mask_folder(tmp_path / "one", 1, 2, 3)
    assert one.dtype == bool and one.tolist() == [[[False, True, False], [False, False, False]]]


def test_errors_name_the_flag_the_cause_and_the_fix(tmp_path):
    """Every error of the reader, word for word: the flag the user typed (given or the default), the cause
    (the PIL exception type for a non-image) and the fix. (Mutation testing: the fix texts, the default
    flags and the flag passed down from load_mask_folder survived.)"""
    def msg(fn, *a, **kw):
        with pytest.raises(UserError) as ei:
            fn(*a, **kw)
        return ei.value.one_line()

    (tmp_path / "x.png").write_bytes(b"not an image")
    assert msg(read_mask, tmp_path / "x.png") == (
        f"mask {tmp_path / 'x.png'} is not a readable image (UnidentifiedImageError) -- pass a png mask "
        "(object pixels non-zero)")
    assert msg(read_mask, tmp_path / "nope.png") == (
        f"mask {tmp_path / 'nope.png'}: file not found -- pass an existing mask image")
    assert msg(load_mask_folder, tmp_path / "none", 1, 2, 3) == (
        f"--masks {tmp_path / 'none'}: folder not found -- pass a folder of mask images, one per frame")
    assert msg(load_mask_folder, tmp_path / "none", 1, 2, 3, flag="--grid-mask").startswith("--grid-mask ")
    assert msg(mask_files, tmp_path / "none").startswith(f"--masks {tmp_path / 'none'}: folder not found")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.png").write_bytes(b"junk")
    assert msg(load_mask_folder, bad, 1, 2, 3, flag="--fg") == (
        f"--fg {bad / '00000.png'} is not a readable image (UnidentifiedImageError) -- pass a png mask "
        "(object pixels non-zero)")
    assert msg(load_mask_folder, bad, 2, 2, 3) == (
        f"--masks {bad} has 1 images, the video 2 frames -- give one mask per frame of the source video "
        "(sorted by file name)")
    _save(bad / "00000.png", np.zeros((2, 3), np.uint8))
    assert msg(load_mask_folder, bad, 1, 2, 4) == (
        f"mask {bad / '00000.png'} is 2x3 (HxW), the video is 2x4 -- masks must have the video's size")
