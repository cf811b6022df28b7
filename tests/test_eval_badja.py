"""BADJA reading and the reference numbers on the real horsejump-high files (evaluation.md §2-§4)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from badja_eval.badja import (BADJA_JOINTS, evaluate_badja, list_sequences, load_sequence, read_mask,
                              resize_mask)
from cosettle.errors import UserError


@pytest.fixture(scope="module")
def hjh(shared_dir):
    seq = load_sequence(shared_dir / "data", "horsejump-high")
    return seq, seq.load_masks()


def test_clip_and_counts(hjh):
    seq, masks = hjh
    assert seq.frame_indices == list(range(50)) and seq.size_hw == (480, 854)
    assert np.flatnonzero(seq.annotated).tolist() == [0, 2, 7, 8, 18, 26, 36, 39, 47, 49]
    assert int(seq.visible.sum()) == 169 and int(seq.visible[:, 0].sum()) == 18
    assert not seq.visible[:, ~seq.annotated].any()  # unannotated frames never count
    assert int(masks[0].sum()) == 24638
    assert 0.2 * np.sqrt(masks[0].sum()) == pytest.approx(31.39, abs=0.005)
    ys, xs = np.nonzero(masks[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (17, 355, 108, 356)


def test_zero_motion_and_gt_reference(hjh):
    seq, masks = hjh
    zero = np.repeat(seq.joints[:, :1], seq.num_frames, axis=1)
    m = evaluate_badja(seq, zero, masks=masks)
    assert (round(m["delta_seg"], 2), round(m["delta_3px"], 2), m["count"]) == (7.28, 0.00, 151)
    m = evaluate_badja(seq, seq.joints.copy(), masks=masks)
    assert (m["delta_seg"], m["delta_3px"], m["count"]) == (100.0, 100.0, 151)


def test_query_modes(hjh):
    seq, masks = hjh
    q0 = seq.query_points("clip0")
    assert q0.shape == (20, 3) and (q0[:, 0] == 0).all()
    np.testing.assert_allclose(q0[:, 1:], seq.joints[:, 0], atol=1e-4)  # no visibility check
    qf = seq.query_points("first-visible")
    later = [BADJA_JOINTS[i] for i in np.flatnonzero(qf[:, 0] > 0)]
    assert later == [22, 36]  # invisible at the first annotated frame, visible later (§2)
    # their own first-visible frames are no longer scored: 151 - 2
    assert evaluate_badja(seq, seq.joints, qf[:, 0], masks=masks)["count"] == 149
    with pytest.raises(UserError):
        seq.query_points("middle")


def test_joints_are_row_col(hjh, shared_dir):
    seq, masks = hjh

    def inside(xy_of):
        hits = []
        for j, t in zip(*np.nonzero(seq.visible)):
            x, y = xy_of(j, t)
            xi, yi = int(round(x)), int(round(y))
            hits.append(0 <= xi < 854 and 0 <= yi < 480 and masks[t][yi, xi])
        return np.mean(hits)

    assert inside(lambda j, t: seq.joints[j, t]) == pytest.approx(0.917, abs=0.001)
    # reading the raw pairs as [x, y] instead would put far fewer inside (§2: 28 %)
    raw = json.loads((shared_dir / "data/badja/joint_annotations/horsejump-high.json").read_text())
    by_t = {int(e["image_path"][-9:-4]): np.array(e["joints"], float)[list(BADJA_JOINTS)] for e in raw}
    swapped = inside(lambda j, t: (by_t[t][j, 0] * 854 / 1920, by_t[t][j, 1] * 480 / 1080))
    assert swapped < 0.5


def test_palette_mask_counts_every_object(tmp_path):
    idx = np.zeros((4, 5), np.uint8)
    idx[0, 0] = 1
    idx[1, 1] = 2  # DAVIS object 2 -> palette colour (0,128,0): channel 0 is zero, still foreground
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    assert int(read_mask(tmp_path / "p.png").sum()) == 2
    Image.fromarray((idx > 0).astype(np.uint8) * 255).save(tmp_path / "b.png")
    assert int(read_mask(tmp_path / "b.png").sum()) == 2
    assert resize_mask(np.ones((2, 2), bool), (4, 6)).sum() == 24


def _official_copy(shared_dir, root, res="480p", frames=range(0, 3)):
    """An official-layout root with the first annotated frames (0 and 2) of horsejump-high."""
    src = shared_dir / "data" / "davis480" / "horsejump-high"
    for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        d = root / "DAVIS" / sub / res / "horsejump-high"
        d.mkdir(parents=True)
        for i in frames:
            shutil.copy(src / sub / f"{i:05d}.{ext}", d / f"{i:05d}.{ext}")
    raw = json.loads((shared_dir / "data/badja/joint_annotations/horsejump-high.json").read_text())
    (root / "joint_annotations").mkdir()
    (root / "joint_annotations" / "horsejump-high.json").write_text(json.dumps(raw[:2]))


def test_official_layout_and_missing_files(shared_dir, tmp_path, hjh):
    _official_copy(shared_dir, tmp_path)
    assert list_sequences(tmp_path) == ["horsejump-high"]
    seq = load_sequence(tmp_path, "horsejump-high")
    assert seq.layout == "official-480p" and seq.num_frames == 3
    np.testing.assert_allclose(seq.joints, hjh[0].joints[:, :3])
    (tmp_path / "DAVIS/Annotations/480p/horsejump-high/00001.png").unlink()
    with pytest.raises(UserError, match="Annotations/480p/horsejump-high/00001.png"):
        load_sequence(tmp_path, "horsejump-high")
    (tmp_path / "DAVIS/JPEGImages/480p/horsejump-high/00002.jpg").unlink()
    with pytest.raises(UserError, match="00002.jpg"):
        load_sequence(tmp_path, "horsejump-high")
    with pytest.raises(UserError, match="dog.json"):
        load_sequence(tmp_path, "dog")


def test_joints_scale_to_the_frames_read(shared_dir, tmp_path, hjh):
    """Half-size frames: joints halve; metrics are still taken at 854x480."""
    src = shared_dir / "data" / "davis480" / "horsejump-high"
    root = tmp_path
    for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        d = root / "davis480" / "horsejump-high" / sub
        d.mkdir(parents=True)
        for i in range(3):
            im = Image.open(src / sub / f"{i:05d}.{ext}")
            im.resize((427, 240), Image.NEAREST).save(d / f"{i:05d}.{ext}")
    raw = json.loads((shared_dir / "data/badja/joint_annotations/horsejump-high.json").read_text())
    (root / "badja" / "joint_annotations").mkdir(parents=True)
    (root / "badja" / "joint_annotations" / "horsejump-high.json").write_text(json.dumps(raw[:2]))
    seq = load_sequence(root, "horsejump-high")
    assert seq.size_hw == (240, 427)
    np.testing.assert_allclose(seq.joints, hjh[0].joints[:, :3] / 2, atol=1e-9)
    shifted = seq.joints.copy()
    shifted[..., 0] += 1.4  # 1.4 px at 427 wide = 2.8 px at 854: within 3 px
    assert evaluate_badja(seq, shifted)["delta_3px"] == 100.0
    shifted[..., 0] += 0.2  # 3.2 px at 854
    assert evaluate_badja(seq, shifted)["delta_3px"] == 0.0
