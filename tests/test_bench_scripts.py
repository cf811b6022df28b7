"""Every benchmark script (scripts/bench_*.py, scripts/tune_fusion.py) run once, end to end, at a tiny size,
so that a change elsewhere that breaks one shows here and not months later. bench_train.py has its own
smoke run in test_cosettle_bench.py. Marked ``slow`` (``-m "not slow"`` skips them locally); CI runs them.
The checks are on what the report must say whatever the timings: the sizes asked for, counts that follow
from the specification, scores inside their range."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._tracker_synth import translating_clip
from tracker.preprocess.pipeline import reference_flow_calls

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(args, timeout=300, **kw):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", COSETTLE_OFFLINE="1")
    p = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=env, cwd=REPO, **kw)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _json_out(p):
    """The script's JSON report: the stdout from its first '{' on."""
    return json.loads(p.stdout[p.stdout.index("{"):])


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """6 JPEG frames of 96x64 with a known translation (what the DAVIS-based defaults are replaced by)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("tiny_clip")
    for k, f in enumerate(translating_clip(64, 96, 6, 2, 1)):
        Image.fromarray(f).save(d / f"{k:05d}.jpg", quality=95)
    return d


def test_bench_preprocess_tiny(tiny_clip_dir, tmp_path):
    p = _run([REPO / "scripts" / "bench_preprocess.py", "--video", tiny_clip_dir, "--max-frames", "4",
              "--work", tmp_path / "w", "--fresh"])
    r = _json_out(p)
    assert r["frames"] == 4 and r["work_size"] == [96, 64]
    assert r["flow_calls_reference"] == reference_flow_calls(4) == 24  # dino_tracker.md section 8
    assert 0 < r["flow_calls"] and r["trajectories"] > 0
    assert not any(s["cached"] for s in r["stages"].values())


def test_bench_scale_tiny(tiny_clip_dir, tmp_path):
    p = _run([REPO / "scripts" / "bench_scale.py", "--sizes", "3", "5", "--iterations", "2", "--vit-frames", "0",
              "--grid", "2", "--clip", tiny_clip_dir, "--work", tmp_path / "w"])
    r = _json_out(p)
    assert [run.get("error") for run in r["runs"]] == [None, None], r["runs"]
    assert [run["frames"] for run in r["runs"]] == [3, 5] and all(run["iterations"] == 2 for run in r["runs"])
    assert all(run["work_size"] == [96, 64] for run in r["runs"])
    assert set(r["growth_exponent"]) == {"preprocess_s", "peak_rss_mb", "trajectory_points"}
    assert "preprocess_s_per_frame" in r


def test_bench_tracker_tiny(shared_dir, tmp_path):
    """horsejump-high (50 frames) shrunk to 107x60, 2 training iterations, no baselines or timing points."""
    p = _run([REPO / "scripts" / "bench_tracker.py", "--size", "107x60", "--iterations", "2", "--points", "0",
              "--no-baselines", "--shared", shared_dir / "data", "--out", tmp_path / "r.json"], timeout=600)
    r = _json_out(p)
    assert json.loads((tmp_path / "r.json").read_text()) == r
    assert r["flow_calls_reference_O_T2"] == reference_flow_calls(50) == 2646  # dino_tracker.md section 8
    scores = [v for k, v in _walk(r) if k.startswith("delta_")]
    assert scores and all(0.0 <= v <= 100.0 for v in scores), scores


def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield k, float(v)


def test_bench_features_tiny(shared_dir):
    p = _run([REPO / "scripts" / "bench_features.py", "--size", "56x42", "--frames", "1", "--rss-frames", "1", "2",
              "--strides", "14"])
    r = _json_out(p)
    (speed,) = r["speed"]
    assert speed["stride"] == 14 and r["resolution"] == "56x42"
    for run in (speed["naive"], speed["ours_all_blocks"], speed["ours_default_layer"]):
        assert run["frames"] == 1 and run["frames_per_s"] > 0 and run["peak_rss_mb"] > 0
    assert r["rss"]["frames"] == [1, 2] and len(r["rss"]["peak_rss_mb"]) == 2


def test_tune_fusion_tiny(tmp_path):
    """The sweep reads the dino predictions badja_eval/run.py cached (one 4-frame synthetic video), and a
    setting scores exactly what run.py's dino-flow scores with it: the sweep uses the tracker's own flows,
    feature cell and work-resolution foreground (it once read the video-resolution masks: one joint off)."""
    common = ["--benchmark", "synthetic", "--difficulty", "easy", "--num-videos", "1", "--num-frames", "4",
              "--out", tmp_path / "eval", "--quiet"]
    fit = ("dino.iterations=2,dino-flow.iterations=2,dino-flow.fusion_snap_cells=2,dino-flow.fusion_train=always,"
           "dino-flow.fusion_head_weight=0.5")
    _run([REPO / "badja_eval" / "run.py", "--trackers", "dino,dino-flow", *common, "--tracker-args", fit])
    p = _run([REPO / "scripts" / "tune_fusion.py", *common, "--tracker-args", "dino.iterations=2",
              "--snap", "1,2", "--fb", "1.5", "--drift-fail", "lost,flow", "--head-weight", "0,0.5",
              "--head-gate", "flow-failed,always",
              "--json", tmp_path / "sweep.json"])
    r = _json_out(p)
    assert json.loads((tmp_path / "sweep.json").read_text()) == r
    assert [(row["snap_cells"], row["fb_px"], row["drift_fail"], row["head_weight"], row["head_gate"])
            for row in r["rows"]] == [(snap, 1.5, fail, weight, gate) for snap in (1.0, 2.0) for fail in ("lost", "flow")
                                      for weight in (0.0, 0.5) for gate in ("flow-failed", "always")]
    for row in r["rows"]:
        assert len(row["per_video"]) == 1
        assert all(np.isfinite(v) for v in row["mean"].values()) and row["mean"]
    ran = json.loads((tmp_path / "eval" / "results.json").read_text())["per_video"]
    (fused,) = [v for k, v in ran.items() if k.split("|")[1].startswith("dino-flow/")]
    (row,) = [row for row in r["rows"]
              if (row["snap_cells"], row["drift_fail"], row["head_weight"], row["head_gate"]) == (2.0, "lost", 0.5,
                                                                                                "flow-failed")]
    (swept,) = row["per_video"].values()  # run.py's settings
    assert {k: swept[k] for k in fused} == fused


def test_bench_motion_masks_tiny(shared_dir, tmp_path):
    """6 frames of cows at 212x120: scores are shares in [0, 1] that follow from each other (IoU <= both
    recall and precision), and a fixed window is reported as given."""
    p = _run([REPO / "scripts" / "bench_motion_masks.py", "--shared", shared_dir, "--sequences", "cows",
              "--max-frames", "6", "--size", "212x120", "--window", "2", "--out", tmp_path / "m.json"])
    r = _json_out(p)
    assert json.loads((tmp_path / "m.json").read_text()) == r
    row = r["clips"]["cows"]
    assert row["frames"] == 6 and row["window"] == 2 and r["size_wh"] == [212, 120]
    for k in ("recall", "precision", "iou", "true_share", "mask_share"):
        assert 0.0 <= row[k] <= 1.0
    assert row["iou"] <= min(row["recall"], row["precision"]) + 1e-12
    bad = subprocess.run([sys.executable, REPO / "scripts" / "bench_motion_masks.py", "--size", "abc"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")


def test_bench_fusion_gate_tiny(shared_dir, tmp_path):
    out = tmp_path / "gate.json"
    args = [REPO / "scripts" / "bench_fusion_gate.py", "--data-root", shared_dir / "data", "--clips", "demo,blackswan",
            "--max-frames", "4", "--num-points", "2", "--out", out]
    _run(args)
    clips = json.loads(out.read_text())["clips"]
    assert clips["demo"]["frames"] == 24 and clips["demo"]["queries"] == 6 and clips["demo"]["masks"] == "auto"
    assert clips["blackswan"]["frames"] == 4 and clips["blackswan"]["queries"] == 2
    for c in clips.values():  # a time where the gate skipped training, the pre-pass's time where it did not
        assert ("ratio" in c) != c["gate"]["trained"] and c["flow_s"] > 0
        assert c["gate"]["need_head"] == 0 or c["gate"]["trained"]
    assert _run(args).stdout == ""  # resumed: both clips are in --out already
