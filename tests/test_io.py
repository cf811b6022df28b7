import json

import numpy as np
import pytest

from cosettle.errors import UserError
from cosettle.io.queries import grid_queries, load_queries
from cosettle.io.overlay import write_overlay
from cosettle.io.tracks import TrackResult, load_tracks, save_tracks
from cosettle.io.video import read_video, write_frames, write_video


def test_mp4_round_trip_keeps_fps_and_content(tmp_path):
    from cosettle.demo import render_demo

    clip = render_demo(num_frames=6, height=48, width=64)[0]
    path = write_video(tmp_path / "a.mp4", clip, fps=10)
    v = read_video(path)
    assert (len(v), v.height, v.width) == (6, 48, 64) and v.fps == pytest.approx(10)
    assert np.abs(v.numpy().astype(int) - clip).mean() < 12  # lossy H.264, but the same picture
    assert len(read_video(path, max_frames=2)) == 2
    s = read_video(path, frame_stride=2)
    assert len(s) == 3 and s.fps == pytest.approx(5) and s.frame_indices == [0, 2, 4]


def test_folder_and_gif(tmp_path, small_clip):
    folder = write_frames(tmp_path / "frames", small_clip)
    v = read_video(folder)
    np.testing.assert_array_equal(v.numpy(), small_clip)  # png is lossless, lazy frames
    assert isinstance(v.frames, list)
    gif = write_video(tmp_path / "a.gif", small_clip, fps=5)
    g = read_video(gif)
    assert len(g) == 6 and g.fps == pytest.approx(5)


def test_odd_sized_mp4_is_written(tmp_path):
    frames = np.zeros((3, 37, 53, 3), np.uint8)
    v = read_video(write_video(tmp_path / "odd.mp4", frames, fps=4))
    assert len(v) == 3 and (v.height, v.width) == (38, 54)


@pytest.mark.parametrize("content,match", [
    (b"", "cannot decode|zero frames"), (b"\x00garbage" * 100, "cannot decode")])
def test_corrupt_videos(tmp_path, content, match):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(UserError, match=match):
        read_video(p)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported"):
        read_video(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no frames"):
        read_video(tmp_path / "empty")


def test_json_and_csv_queries(tmp_path):
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"points": [{"frame": 1, "x": 3.5, "y": 4, "name": "nose"}, {"frame": 0, "x": 0, "y": 0}]}))
    q = load_queries(j, 5, 10, 20)
    np.testing.assert_array_equal(q.txy, [[1, 3.5, 4], [0, 0, 0]])
    assert q.names == ["nose", "p1"]
    c = tmp_path / "p.csv"
    c.write_text("frame,x,y,name\n1,3.5,4,nose\n0,0,0,\n")
    q2 = load_queries(c, 5, 10, 20)
    np.testing.assert_array_equal(q2.txy, q.txy)
    assert q2.names == q.names


@pytest.mark.parametrize("text,match", [
    ("{not json", "malformed JSON"), ('{"points": []}', "no points"), ('{"pts": 1}', "no 'points'"),
    ('{"points": [{"frame": 0, "x": 1}]}', "frame, x, y"),
    ('{"points": [{"frame": 0, "x": "a", "y": 1}]}', "not a number"),
    ('{"points": [{"frame": 0, "x": 20, "y": 1}]}', "outside"),
    ('{"points": [{"frame": 0, "x": -0.6, "y": 1}]}', "outside"),
    ('{"points": [{"frame": 5, "x": 1, "y": 1}]}', "out of range"),
    ('{"points": [{"frame": 0.5, "x": 1, "y": 1}]}', "out of range")])
def test_bad_query_files(tmp_path, text, match):
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(UserError, match=match):
        load_queries(p, 5, 10, 20)


def test_pixel_centre_edges_are_inside(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"points": [{"frame": 0, "x": -0.5, "y": 9.5}, {"frame": 4, "x": 19.5, "y": -0.5}]}))
    assert len(load_queries(p, 5, 10, 20)) == 2


def test_grid_queries_and_mask():
    q = grid_queries(10, 20, 2, frame=3)
    np.testing.assert_allclose(q.txy, [[3, 4.5, 2], [3, 14.5, 2], [3, 4.5, 7], [3, 14.5, 7]])
    mask = np.zeros((10, 20), bool)
    mask[:, 10:] = True
    assert np.all(grid_queries(10, 20, 2, mask=mask).xy[:, 0] > 10)
    with pytest.raises(UserError):
        grid_queries(10, 20, 2, mask=np.zeros((10, 20)))


def test_tracks_files_round_trip(tmp_path, small_clip):
    rng = np.random.default_rng(0)
    res = TrackResult(rng.random((3, 6, 2)) * 40, rng.random((3, 6)) > 0.3, rng.random((3, 6)),
                      [[0, 1, 2], [1, 3, 4], [2, 5, 6]], ["a", "b", "c"])
    paths = save_tracks(tmp_path, res, fps=10, size_hw=(48, 64), metadata={"tracker": "test"})
    back, info = load_tracks(paths["npz"])
    np.testing.assert_array_equal(back.tracks, res.tracks)
    np.testing.assert_array_equal(back.visible, res.visible)
    assert back.names == ["a", "b", "c"] and info["size_hw"] == (48, 64)
    assert info["metadata"]["tracker"] == "test"
    data = json.loads(paths["json"].read_text())
    assert data["points"][1]["visible"] == res.visible[1].tolist()
    rows = paths["csv"].read_text().strip().splitlines()
    assert rows[0] == "point,name,frame,x,y,visible,confidence" and len(rows) == 1 + 3 * 6
    ov = write_overlay(tmp_path / "overlay.mp4", small_clip, res, fps=10)
    assert len(read_video(ov)) == 6
