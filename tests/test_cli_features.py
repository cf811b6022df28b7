"""The feature-pipeline CLI: real run, and every bad input -> one line, exit 2, no output files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosettle.io.video import write_frames, write_video

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "extract_features.py"


def run(*args, env_extra=None, cwd=None):
    import os

    env = dict(os.environ, COSETTLE_CACHE=str(Path(cwd or ".") / "cache"), **(env_extra or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture
def clip_dir(tmp_path, small_clip):
    write_video(tmp_path / "clip.mp4", small_clip, fps=8)
    (tmp_path / "ok.json").write_text(json.dumps({"points": [{"frame": 1, "x": 10, "y": 20}]}))
    return tmp_path


def test_extracts_features_and_maps_points(clip_dir):
    out = clip_dir / "out"
    r = run("--video", clip_dir / "clip.mp4", "--points", clip_dir / "ok.json", "--out", out, cwd=clip_dir)
    assert r.returncode == 0, r.stderr
    feats = np.load(out / "features.npy")
    geom = json.loads((out / "geometry.json").read_text())
    assert feats.shape == (6, 262, geom["grid_h"], geom["grid_w"])
    pt = json.loads((out / "points_grid.json").read_text())["points"][0]
    # dsift: patch 16, stride 8, offset 7.5, no resize at 64x48 -> grid x = (10 - 7.5) / 8
    assert pt["grid_x"] == pytest.approx((10 - 7.5) / 8) and pt["grid_y"] == pytest.approx((20 - 7.5) / 8)
    assert json.loads((out / "run_info.json").read_text())["git_sha"]


def _bad_inputs(d: Path):
    (d / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 50)
    (d / "empty.json").write_text('{"points": []}')
    (d / "broken.json").write_text('{"points": [')
    (d / "outside.json").write_text(json.dumps({"points": [{"frame": 0, "x": 500, "y": 1}]}))
    (d / "late.json").write_text(json.dumps({"points": [{"frame": 99, "x": 1, "y": 1}]}))
    write_frames(d / "tiny", np.zeros((2, 8, 8, 3), np.uint8))
    clip = d / "clip.mp4"
    return {
        "missing video": (["--video", d / "nope.mp4"], "not found"),
        "corrupt video": (["--video", d / "corrupt.mp4"], "cannot decode"),
        "empty points": (["--video", clip, "--points", d / "empty.json"], "no points"),
        "malformed points": (["--video", clip, "--points", d / "broken.json"], "malformed JSON"),
        "point outside": (["--video", clip, "--points", d / "outside.json"], "outside"),
        "frame out of range": (["--video", clip, "--points", d / "late.json"], "out of range"),
        "unknown backend": (["--video", clip, "--backend", "resnet9000"], "unknown backend"),
        "weights offline": (["--video", clip, "--backend", "dinov2_vits14"], "unreachable"),
        "missing weights file": (["--video", clip, "--backend", "dinov2_vits14", "--weights", d / "w.pth"], "not found"),
        "too small": (["--video", d / "tiny"], "too small"),
    }


def test_bad_inputs_exit_2_with_one_line(clip_dir):
    for label, (args, match) in _bad_inputs(clip_dir).items():
        out = clip_dir / f"out_{label.replace(' ', '_')}"
        r = run(*args, "--out", out, env_extra={"HF_HUB_CACHE": str(clip_dir / "hf")}, cwd=clip_dir)
        assert r.returncode == 2, (label, r.stdout, r.stderr)
        err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(err_lines) == 1 and match in err_lines[0], (label, r.stderr)
        assert "Traceback" not in r.stderr, label
        assert not out.exists() or not any(out.iterdir()), label
