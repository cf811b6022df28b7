"""fit_info.json: every DINO-Tracker training session records the code (git SHA), versions, threads, backend,
seed and iterations beside its checkpoints; a fit that resumes or reuses checkpoints trained by other code says
so in one INFO line; the evaluator carries the SHA into its results (``fit_git``). Tiny fits (6 iterations,
64x96, 6 frames): seconds each."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import tracker.dino.train
from badja_eval.runner import Method, Runner, Task, fit_gits
from cosettle.provenance import git_sha
from tests._tracker_synth import translating_clip
from tests.test_tracker_api import Q, _backend, _cfg
from tracker.api import Tracker, training_key
from tracker.dino.fit_info import FIT_INFO, NOT_RECORDED

OTHER = "0123456789abcdef0123456789abcdef01234567"  # a git SHA that is not this checkout's
SESSION_FIELDS = {"git_sha", "git_dirty", "torch", "timm", "opencv", "numpy", "torch_threads", "omp_num_threads",
                  "training_key", "backend", "backend_stride", "backend_patch_size", "seed", "iterations_target",
                  "start_iteration", "iterations_done", "resumed_from", "resumed_from_git",
                  "resumed_from_other_git", "start_utc", "end_utc"}


@pytest.fixture(scope="module")
def clip():
    return translating_clip(64, 96, 6, 3, 1)


def _tiny(work):
    return _cfg(work, iterations=6, cyc_after=3, rbb_after=3, checkpoint_every=3, log_every=3)


def _info_path(work):
    return next(work.glob(f"train_*/{FIT_INFO}"))


def _pretend_trained_by(path, sha):
    info = json.loads(path.read_text())
    for s in info["sessions"]:
        s["git_sha"] = sha
    path.write_text(json.dumps(info))


def test_fresh_fit_writes_fit_info(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = _tiny(tmp_path)
    tr = Tracker(_backend(), cfg, progress=False).fit(clip)
    path = _info_path(tmp_path)
    assert path.parent.name == f"train_{training_key(cfg)}"  # beside the checkpoints
    info = json.loads(path.read_text())
    assert info["training_key"] == training_key(cfg) and len(info["sessions"]) == 1
    s = info["sessions"][0]
    assert set(s) == SESSION_FIELDS
    head = git_sha()
    assert s["git_sha"] == head and s["git_dirty"] == head.endswith("-dirty")
    assert s["torch"] and s["numpy"] and s["opencv"] and s["torch_threads"] >= 1 and s["omp_num_threads"] == "1"
    assert (s["backend"], s["backend_stride"], s["seed"]) == ("dsift", 4, 5)
    assert (s["start_iteration"], s["iterations_done"], s["iterations_target"]) == (0, 6, 6)
    assert s["resumed_from"] is None and s["resumed_from_other_git"] is None
    assert s["start_utc"] <= s["end_utc"]
    assert tr.report().info["fit"]["fit_git"] == head


def test_resume_from_other_code_keeps_sessions_and_logs(clip, tmp_path, caplog, monkeypatch):
    """Killed after checkpoint 3 (an exception in iteration 5), the checkpoints then 'written by' another SHA: the
    resumed fit appends a second session that names the other SHA and logs it once; the first stays unfinished."""
    step = tracker.dino.train.Trainer.step

    def step_then_fail(self, it):
        if it == 4:
            raise RuntimeError("killed")
        return step(self, it)

    monkeypatch.setattr(tracker.dino.train.Trainer, "step", step_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        Tracker(_backend(), _tiny(tmp_path), progress=False).fit(clip)
    monkeypatch.setattr(tracker.dino.train.Trainer, "step", step)
    path = _info_path(tmp_path)
    first = json.loads(path.read_text())["sessions"]
    assert len(first) == 1 and first[0]["iterations_done"] == 3 and first[0]["end_utc"] is None
    _pretend_trained_by(path, OTHER)
    with caplog.at_level(logging.INFO, logger="tracker.dino.fit_info"):
        tr = Tracker(_backend(), _tiny(tmp_path), progress=False).fit(clip)
    lines = [r.getMessage() for r in caplog.records if OTHER in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("resuming the fit"), caplog.text
    sessions = json.loads(path.read_text())["sessions"]
    assert [s["git_sha"] for s in sessions] == [OTHER, git_sha()]
    s = sessions[1]
    assert (s["start_iteration"], s["iterations_done"], s["resumed_from"]) == (3, 6, "ckpt_0000003.pt")
    assert s["resumed_from_git"] == OTHER and s["resumed_from_other_git"] is True and s["end_utc"]
    assert tr.report().info["fit"]["fit_git"] == f"{OTHER}, {git_sha()}"


def test_cached_fit_trained_by_other_code_is_logged_not_rewritten(clip, tmp_path, caplog):
    cfg = _tiny(tmp_path)
    a = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    path = _info_path(tmp_path)
    _pretend_trained_by(path, OTHER)
    before = path.read_text()
    with caplog.at_level(logging.INFO):
        tr = Tracker(_backend(), cfg, progress=False).fit(clip)
    assert "training: 0 iterations" in caplog.text  # reused, not retrained
    lines = [r.getMessage() for r in caplog.records if r.name == "tracker.dino.fit_info"]
    assert len(lines) == 1 and lines[0].startswith("reusing the finished fit") and OTHER in lines[0]
    assert path.read_text() == before  # nothing trained: nothing recorded
    assert tr.report().info["fit"]["fit_git"] == OTHER
    np.testing.assert_array_equal(tr.track(Q).tracks, a.tracks)  # the record changes no result

    path.unlink()  # a fit cached by code that recorded nothing
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tr = Tracker(_backend(), cfg, progress=False).fit(clip)
    assert any("recorded no fit_info.json" in r.getMessage() for r in caplog.records), caplog.text
    assert tr.report().info["fit"]["fit_git"] == NOT_RECORDED and not path.exists()


class _FitTracker:
    """A fake tracker whose report names the code of its fit, as DINO-Tracker's does."""

    def __init__(self, sha):
        self.sha = sha

    def fit(self, video, masks=None):
        self.T = len(video)
        return self

    def track(self, queries):
        from cosettle.io.tracks import TrackResult

        q = np.asarray(queries)
        tracks = np.repeat(q[:, None, 1:], self.T, axis=1)
        return TrackResult(tracks, np.ones(tracks.shape[:2], bool), np.ones(tracks.shape[:2]), q)

    def report(self):
        from tracker.base import RunReport

        return RunReport(info={"fit": {"fit_git": self.sha}})


def test_evaluator_records_fit_git(tmp_path):
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    tasks = [Task("seq0", lambda: (frames, None), np.array([[0, 1.0, 2.0]]), (4, 8, 8), "c0")]

    def runner(sha):
        return Runner(tmp_path / "cache", build_tracker=lambda n, b, c: _FitTracker(sha), progress=False)

    preds = runner(OTHER).run(tasks, [Method("fake")])
    assert preds[("seq0", "fake")].fit_git == OTHER and fit_gits(preds) == {"seq0|fake": OTHER}
    again = runner("ignored").run(tasks, [Method("fake")])  # from the evaluator's result cache: kept
    assert again[("seq0", "fake")].cached and fit_gits(again) == {"seq0|fake": OTHER}


def test_the_newest_session_decides_and_an_untrained_fit_says_nothing(tmp_path, caplog):
    """Sessions A, B, A: the checkpoints are A's (the last session), so reusing them at A logs nothing; a fit of
    0 iterations reuses no checkpoint and records nothing."""
    import types

    from tracker.dino.fit_info import FitRecord

    head = git_sha()
    (tmp_path / FIT_INFO).write_text(json.dumps({"version": 1, "training_key": "k", "sessions": [
        {"git_sha": head}, {"git_sha": OTHER}, {"git_sha": head}]}))
    cfg = types.SimpleNamespace(iterations=6, seed=0)
    with caplog.at_level(logging.INFO, logger="tracker.dino.fit_info"):
        rec = FitRecord(tmp_path, "k", None, cfg)
        rec.begin(6, "ckpt_0000006.pt")
        assert not caplog.records and rec.summary()["fit_git"] == f"{head}, {OTHER}"
        empty = tmp_path / "empty"
        FitRecord(empty, "k", None, types.SimpleNamespace(iterations=0, seed=0)).begin(0, None)
    assert not caplog.records and not (empty / FIT_INFO).exists()
