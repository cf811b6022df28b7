"""TAP-Vid pickles, query sampling and the corner/centre coordinate conversion."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from badja_eval import tapvid
from cosettle.errors import UserError


def _video(T=6, H=32, W=48, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    pts = rng.uniform(0.1, 0.9, (3, T, 2)).astype(np.float32)
    occ = np.zeros((3, T), bool)
    occ[0, :2] = True  # first visible at frame 2
    occ[1, :] = True  # never visible
    occ[2, 5] = True
    return {"video": video, "points": pts, "occluded": occ}


def test_reads_dict_list_and_jpeg_layouts(tmp_path):
    d = {"a": _video(), "b": _video(seed=1)}
    (tmp_path / "davis.pkl").write_bytes(pickle.dumps(d))
    vids = tapvid.load_pickle(tmp_path / "davis.pkl")
    assert [v.name for v in vids] == ["a", "b"]
    np.testing.assert_array_equal(vids[1].video, d["b"]["video"])
    v = _video()
    jpgs = []
    for f in v["video"]:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        jpgs.append(buf.getvalue())
    (tmp_path / "kin.pkl").write_bytes(pickle.dumps([dict(v, video=jpgs), _video(seed=2)]))
    vids = tapvid.load_pickle(tmp_path / "kin.pkl")
    assert len(vids) == 2 and vids[0].hw == (32, 48) and vids[0].num_frames == 6
    assert vids[0].frames().shape == (6, 32, 48, 3)
    # decoded JPEG: what an independent decoder (OpenCV's libjpeg-turbo, BGR -> RGB) makes of the same
    # bytes, frame by frame. (A bound against the original frames cannot tell: JPEG of 32x48 uniform
    # noise is off by ~47 levels on average, and a flat grey frame by ~64.)
    import cv2

    decoded = vids[0].frames()
    for k, buf in enumerate(jpgs):
        ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.abs(decoded[k].astype(int) - ref).max() <= 1, k  # ISLOW IDCT: equal up to libjpeg rounding


def test_untrusted_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UserError, match="trust-pickle"):
        tapvid.load_pickle(tmp_path / "evil.pkl")
    with pytest.raises(UserError, match="not found"):
        tapvid.load_pickle(tmp_path / "missing.pkl")
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"v": {"video": np.zeros((2, 4, 4, 3), np.uint8),
                                                           "points": np.zeros((1, 3, 2)),
                                                           "occluded": np.zeros((1, 3), bool)}}))
    with pytest.raises(UserError, match="do not match"):
        tapvid.load_pickle(tmp_path / "bad.pkl")


def test_query_sampling_first_and_strided():
    v = _video(T=12)
    occ = v["occluded"].copy()
    occ = np.concatenate([occ, occ], axis=1)[:, :12]
    pts = np.arange(3 * 12 * 2, dtype=float).reshape(3, 12, 2)
    q, idx = tapvid.sample_queries(pts, occ, "first")
    assert idx.tolist() == [0, 2]  # the never-visible track is dropped
    assert q[0].tolist() == [2, pts[0, 2, 1], pts[0, 2, 0]]  # [t, y, x]
    q, idx = tapvid.sample_queries(pts, occ, "strided", stride=5)
    # frames 0, 5, 10: track 0 visible at 5 and 10 (occluded 0-1, 6-7), track 2 at 0 and 10 (occluded 5)
    assert list(zip(q[:, 0].astype(int).tolist(), idx.tolist())) == [(0, 2), (5, 0), (10, 0), (10, 2)]


def test_corner_convention_round_trip():
    # normalised 0.5 on a 256 axis is raster 128.0 == our pixel-centre 127.5
    assert tapvid.norm_to_raster(np.array([0.5, 0.5]), (256, 256)).tolist() == [128.0, 128.0]
    assert tapvid.raster_to_ours(np.array([128.0, 128.0])).tolist() == [127.5, 127.5]
    # our pixel centre 0 at 512 wide -> raster 0.5 -> 0.25 at 256 (the pixel edge stays the edge)
    np.testing.assert_allclose(tapvid.ours_to_raster(np.array([0.0, 0.0]), (512, 512)), [0.25, 0.25])
    np.testing.assert_allclose(tapvid.ours_to_raster(np.array([511.5, 255.5]), (256, 512)), [256.0, 256.0])


@pytest.mark.parametrize("resolution", ["256", "full"])
@pytest.mark.parametrize("mode", ["first", "strided"])
def test_gt_predictions_score_perfectly_and_shift_is_seen(mode, resolution):
    v = tapvid.TapVidVideo("v", **_video(T=10, H=40, W=80))
    task = tapvid.prepare(v, mode, resolution)
    h, w = task.load_frames().shape[1:3]
    assert (h, w) == ((256, 256) if resolution == "256" else (40, 80))
    # a perfect tracker answers in our convention at the inference size
    gt_ours = tapvid.raster_to_ours(tapvid.norm_to_raster(v.points, (h, w)))
    _, idx = tapvid.sample_queries(tapvid.norm_to_raster(v.points, (256, 256)), v.occluded, mode)
    # the queries handed to the tracker lie on the GT track in our convention
    np.testing.assert_allclose(task.queries_ours[:, 1:],
                               gt_ours[idx, task.queries_ours[:, 0].astype(int)], atol=1e-9)
    m = tapvid.score(task, gt_ours[idx], ~v.occluded[idx])
    assert m["average_jaccard"] == pytest.approx(100.0) and m["occlusion_accuracy"] == 100.0
    # an error of 1.2 px at the evaluation size (whatever the inference size) fails δ<1, passes δ<2
    shift = 1.2 * w / 256
    m = tapvid.score(task, gt_ours[idx] + [shift, 0], ~v.occluded[idx])
    assert m["pts_within_1"] == 0.0 and m["pts_within_2"] == 100.0


def test_pickles_written_by_numpy_1_are_admitted(tmp_path):
    """The official pickles predate numpy 2: their arrays are rebuilt via numpy.core.multiarray."""
    d = {"v": _video(T=6)}
    raw = pickle.dumps(d, protocol=2)  # protocol 2 names globals as text lines
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "old.pkl").write_bytes(raw)
    vids = tapvid.load_pickle(tmp_path / "old.pkl")
    np.testing.assert_array_equal(vids[0].points, d["v"]["points"])
