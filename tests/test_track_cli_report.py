"""The track command and a tracker a user registers: its config is built through the registry's ``config_class``
(with ``--config``'s keys) and what its ``report()`` holds is printed and written -- the CLI asks the tracker
nothing else (it once probed ``timings`` / ``work_dir`` / ``train_coverage`` / ``fusion_stats`` with getattr and
passed ``config=None`` to every tracker but the DINO ones)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

import tracker.commands.track as track_command
from cosettle.io.queries import Queries
from cosettle.io.tracks import TrackResult
from cosettle.io.video import write_video
from tests._tracker_synth import translating_clip
from tracker.base import PointTracker, RunReport
from tracker.registry import _REGISTRY, register_tracker


@dataclass
class StepConfig:
    step_px: float = 1.0  # every point moves this far right per frame


class StepTracker:
    """Moves every query ``step_px`` to the right per frame (positions a test can compute by hand)."""

    name = "step-test"

    def __init__(self, config: StepConfig | None):
        self.config = config

    def fit(self, video, masks=None, eta=None):
        self.T = len(video)
        return self

    def track(self, queries) -> TrackResult:
        assert isinstance(queries, Queries)  # the CLI passes the queries object, names and all
        q = queries.txy
        t = np.arange(self.T)
        tracks = np.repeat(q[:, None, 1:3], self.T, axis=1).astype(np.float32)
        tracks[..., 0] += (t[None, :] - q[:, None, 0]) * self.config.step_px
        ones = np.ones(tracks.shape[:2])
        return TrackResult(tracks, ones.astype(bool), ones, q, list(queries.names))

    def report(self) -> RunReport:
        return RunReport(timings={"warm up": 1.5}, info={"step_test": {"moved": self.config.step_px}})


@pytest.fixture
def step_tracker():
    @register_tracker("step-test", summary="moves right", config_class=StepConfig, rank=91)
    def _build(backend, config, progress, **kwargs):
        return StepTracker(config)

    try:
        yield "step-test"
    finally:
        _REGISTRY.pop("step-test")


@pytest.fixture
def no_settings_tracker():
    @register_tracker("bare-test", summary="takes no settings", rank=92)
    def _build(backend, config, progress, **kwargs):
        assert config is None
        return StepTracker(StepConfig())

    try:
        yield "bare-test"
    finally:
        _REGISTRY.pop("bare-test")


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        track_command.main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _clip(tmp_path):
    video = write_video(tmp_path / "clip.mp4", translating_clip(48, 64, 5, 2, 1), fps=10)
    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps({"points": [{"frame": 0, "x": 10, "y": 20, "name": "nose"},
                                          {"frame": 2, "x": 30.5, "y": 12}]}))
    return video, pts


def test_a_user_tracker_gets_its_config_and_its_report_is_printed_and_written(step_tracker, tmp_path, capsys):
    assert isinstance(StepTracker(None), PointTracker)
    video, pts = _clip(tmp_path)
    conf = tmp_path / "step.yaml"
    conf.write_text("step_px: 2.5\n")
    out = tmp_path / "out"
    code, stdout, err = _run(["--video", str(video), "--points", str(pts), "--tracker", step_tracker,
                              "--config", str(conf), "--out", str(out), "--no-overlay"], capsys)
    assert code == 0, err
    with np.load(out / "tracks.npz") as z:
        tracks, names = z["tracks"], [str(n) for n in z["names"]]
    # by hand: 2.5 px per frame from the query frame, x only
    np.testing.assert_allclose(tracks[0, :, 0], [10, 12.5, 15, 17.5, 20])
    np.testing.assert_allclose(tracks[1, :, 0], [25.5, 28, 30.5, 33, 35.5])
    np.testing.assert_allclose(tracks[:, :, 1], [[20] * 5, [12] * 5])
    assert names == ["nose", "p1"]
    assert "warm up 1.5 s" in stdout                         # the report's stage, in the summary's time line
    info = json.loads((out / "run_info.json").read_text())
    assert info["step_test"] == {"moved": 2.5} and info["stages_s"]["warm up"] == 1.5
    assert info["total_s"] > 0 and "work_dir" not in info    # no work folder reported: none printed
    assert yaml.safe_load((out / "config.yaml").read_text())["tracker_config"] == {"step_px": 2.5}


def test_config_for_a_tracker_without_settings_is_one_error_line(no_settings_tracker, tmp_path, capsys):
    video, pts = _clip(tmp_path)
    conf = tmp_path / "c.yaml"
    conf.write_text("step_px: 2.5\n")
    out = tmp_path / "out"
    code, stdout, err = _run(["--video", str(video), "--points", str(pts), "--tracker", no_settings_tracker,
                              "--config", str(conf), "--out", str(out)], capsys)
    assert code == 2 and not out.exists() and stdout == ""
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: the bare-test tracker takes no settings, but --config {conf} was given -- drop --config"]
    code, _, err = _run(["--video", str(video), "--points", str(pts), "--tracker", no_settings_tracker,
                         "--out", str(out), "--no-overlay"], capsys)
    assert code == 0, err


def test_a_baseline_gets_its_config_class_from_the_cli(tmp_path, capsys):
    """``flow`` with ``--config``: its FlowTrackerConfig takes the file's keys (a bad key is one error line)."""
    video, pts = _clip(tmp_path)
    conf = tmp_path / "flow.yaml"
    conf.write_text("fb_threshold: 1.0e-6\n")                 # no flow step passes a 1e-6 px check
    out = tmp_path / "out"
    code, _, err = _run(["--video", str(video), "--points", str(pts), "--tracker", "flow", "--config", str(conf),
                         "--out", str(out), "--no-overlay"], capsys)
    assert code == 0, err
    with np.load(out / "tracks.npz") as z:
        vis = z["visible"]
    assert vis.sum() == 2  # only the two query entries themselves (the default 1.5 px keeps this pan visible)
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 3\n")
    code, _, err = _run(["--video", str(video), "--points", str(pts), "--tracker", "flow", "--config", str(bad),
                         "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "unknown" in err and "iterations" in err


class OldStyleTracker(StepTracker):
    """Written for the protocol before the report and the estimate: fit(video, masks), no report()."""

    def fit(self, video, masks=None):
        return super().fit(video, masks)

    report = None


def test_a_tracker_without_report_or_eta_is_one_error_line(tmp_path, capsys):
    @register_tracker("old-test", summary="older protocol", rank=93)
    def _build(backend, config, progress, **kwargs):
        return OldStyleTracker(StepConfig())

    try:
        video, pts = _clip(tmp_path)
        out = tmp_path / "out"
        code, stdout, err = _run(["--video", str(video), "--points", str(pts), "--tracker", "old-test",
                                  "--out", str(out)], capsys)
    finally:
        _REGISTRY.pop("old-test")
    assert code == 2 and not out.exists() and stdout == "" and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: the old-test tracker lacks report(), fit(video, masks=None, eta=None)'s eta argument of the tracker "
        "protocol -- see tracker/base.py (PointTracker) and docs/development.md#adding-a-tracker"]
