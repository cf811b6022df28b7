"""scripts/track.py: outputs of a real (tiny) run, and bad inputs -> exit 2, one line, no outputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import tracker.commands.track as track_command
import torch

from cosettle.io.video import write_video
from tests._tracker_synth import translating_clip

REPO = Path(__file__).resolve().parents[1]


CLI = track_command  # `python scripts/track.py` = `cosettle-track` = tracker.commands.track.main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        CLI.main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    frames = translating_clip(64, 96, 6, 3, 1)
    video = write_video(d / "clip.mp4", frames, fps=10)
    pts = d / "pts.json"
    pts.write_text(json.dumps({"points": [{"frame": 0, "x": 40, "y": 30, "name": "a"},
                                          {"frame": 5, "x": 20.5, "y": 40}]}))
    return video, pts


def test_dino_run_writes_every_output(clip_files, tmp_path, capsys):
    video, pts = clip_files
    out = tmp_path / "out"
    # this clip's flow holds, so the default would skip training (tests/test_fusion_gate.py); train as before
    conf = tmp_path / "always.yaml"
    conf.write_text("fusion_train: always\n")
    code, stdout, err = run(["--video", str(video), "--points", str(pts), "--out", str(out), "--iterations", "6",
                        "--work-dir", str(tmp_path / "work"), "--stride", "4", "--seed", "1",
                        "--config", str(conf)], capsys)
    assert code == 0, err
    for name in ("tracks.npz", "tracks.json", "tracks.csv", "overlay.mp4", "config.yaml", "run_info.json",
                 "track.log"):
        assert (out / name).is_file(), name
    z = np.load(out / "tracks.npz")
    assert z["tracks"].shape == (2, 6, 2)
    np.testing.assert_allclose(z["tracks"][1, 5], [20.5, 40], atol=1e-4)
    info = json.loads((out / "run_info.json").read_text())
    assert {"preprocess", "train", "track"} <= set(info["stages_s"])
    assert info["torch_threads"] == torch.get_num_threads()  # a fit is reproducible at the same count
    assert "iterations: 6" in (out / "config.yaml").read_text()
    assert "done in" in stdout and "tracks.npz" in stdout and "done in" not in err  # the summary: stdout


def test_static_tracker_grid(clip_files, tmp_path, capsys):
    video, _ = clip_files
    out = tmp_path / "out"
    code, _, err = run(["--video", str(video), "--grid-size", "3", "--grid-frame", "2", "--tracker", "static",
                        "--out", str(out), "--no-overlay"], capsys)
    assert code == 0, err
    z = np.load(out / "tracks.npz")
    assert z["tracks"].shape == (9, 6, 2)
    np.testing.assert_allclose(z["tracks"][:, 0], z["tracks"][:, 5])


def _bad_cases(tmp: Path, video: Path, pts: Path):
    corrupt = tmp / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 100)
    malformed = tmp / "malformed.json"
    malformed.write_text("{points: [")
    empty = tmp / "empty.json"
    empty.write_text(json.dumps({"points": []}))
    outside = tmp / "outside.json"
    outside.write_text(json.dumps({"points": [{"frame": 0, "x": 500, "y": 10}]}))
    late = tmp / "late.json"
    late.write_text(json.dumps({"points": [{"frame": 6, "x": 5, "y": 10}]}))
    badcfg = tmp / "bad.yaml"
    badcfg.write_text("not_a_key: 3\n")
    v = ["--video", str(video)]
    return {
        "missing video": ["--video", str(tmp / "nope.mp4"), "--points", str(pts)],
        "corrupt video": ["--video", str(corrupt), "--points", str(pts)],
        "missing points": v + ["--points", str(tmp / "nope.json")],
        "malformed points": v + ["--points", str(malformed)],
        "empty points": v + ["--points", str(empty)],
        "point outside": v + ["--points", str(outside)],
        "frame out of range": v + ["--points", str(late)],
        "grid frame out of range": v + ["--grid-size", "2", "--grid-frame", "9"],
        "no points": v,
        "unknown backend": v + ["--points", str(pts), "--backend", "nosuchnet"],
        "weights missing offline": v + ["--points", str(pts), "--backend", "dinov2_vits14"],
        "weights file missing": v + ["--points", str(pts), "--backend", "dinov2_vits14", "--weights",
                                     str(tmp / "nope.safetensors")],
        "unknown config key": v + ["--points", str(pts), "--config", str(badcfg)],
    }


def test_bad_inputs_exit_2_one_line_no_outputs(clip_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COSETTLE_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    video, pts = clip_files
    for name, argv in _bad_cases(tmp_path, video, pts).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, stdout, err = run(argv + ["--out", str(out), "--work-dir", str(tmp_path / "w")], capsys)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert code == 2, (name, err)
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name


def test_demo_mode_without_video(tmp_path, capsys):
    out = tmp_path / "demo_out"
    code, stdout, err = run(["--out", str(out), "--iterations", "3", "--no-overlay",
                             "--work-dir", str(tmp_path / "work")], capsys)
    assert code == 0, err
    assert (out / "demo" / "demo.mp4").is_file() and (out / "tracks.npz").is_file()
    info = json.loads((out / "run_info.json").read_text())
    # the reported error is the mean distance of the written tracks to the demo's written ground truth over
    # frames 1.. (recomputed here from the two files; the CLI rounds it to 3 decimals)
    gt = np.asarray(json.loads((out / "demo" / "demo_gt.json").read_text())["tracks_xy"])
    with np.load(out / "tracks.npz") as z:
        tracks = z["tracks"]
    assert tracks.shape == gt.shape and gt.shape[1] == 24
    mine = float(np.linalg.norm(tracks - gt, axis=-1)[:, 1:].mean())
    assert info["demo_mean_error_px"] == pytest.approx(mine, abs=5e-4), (info["demo_mean_error_px"], mine)
    assert f"demo: mean error vs ground truth {info['demo_mean_error_px']:.2f} px (frames 1..23)" in stdout  # summary


def test_automatic_masks_that_find_nothing_warn_once_naming_masks(clip_files, tmp_path, capsys):
    """The test clip is one rigid pan: the motion masks find no independently moving object (DIS noise
    leaves ~1 % of the frame). The run still finishes and tracks, with one warning line that names --masks; with the
    user's masks (the whole frame here) there is no such line."""
    video, pts = clip_files
    argv = ["--video", str(video), "--points", str(pts), "--iterations", "3", "--no-overlay", "--stride", "4",
            "--tracker", "dino"]
    code, _, err = run(argv + ["--out", str(tmp_path / "o1"), "--work-dir", str(tmp_path / "w1")], capsys)
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if "--masks" in ln]
    assert len(warn) == 1, err
    share = re.search(r"motion masks cover only (\d+\.\d)% of the frame", warn[0])
    assert share and float(share.group(1)) < 2.0, warn  # the warning's own 2 % floor
    assert np.isfinite(np.load(tmp_path / "o1" / "tracks.npz")["tracks"]).all()
    import imageio.v3 as iio

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        iio.imwrite(masks / f"{i:05d}.png", np.full((64, 96), 255, np.uint8))
    code, _, err = run(argv + ["--masks", str(masks), "--out", str(tmp_path / "o2"), "--work-dir", str(tmp_path / "w2")],
                       capsys)
    assert code == 0, err
    assert not [ln for ln in err.splitlines() if "--masks" in ln], err
