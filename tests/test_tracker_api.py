"""Tracker API end to end on generated clips: original-pixel outputs, caching, determinism, resume
after a killed process, odd sizes with a ViT backend."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from tests._subproc import kill_when_announced
from tests._tracker_synth import gt_track, translating_clip
from tracker.api import Tracker
from tracker.config import preset

REPO = Path(__file__).resolve().parents[1]
DX, DY, T = 3, 1, 6
Q = np.array([[0, 40.0, 30.0], [3, 50.0, 25.0], [5, 35.0, 38.0]])


def _cfg(work, **kw):
    base = dict(iterations=30, batch_size=128, cyc_after=20, rbb_after=20, checkpoint_every=10,
                log_every=10, cl_points=64, cyc_points=64, seed=5, work_dir=str(work))
    base.update(kw)
    return preset("fast", **base)


def _backend():
    return load_backend("dsift", patch_size=8, stride=4)


@pytest.fixture(scope="module")
def clip():
    return translating_clip(64, 96, T, DX, DY)


# The accuracy target on this exact integer translation, the same as tests/test_tracker_inference.py's:
# mean error < 2 px (half a dsift feature cell of 4 px). At 30 iterations the tracker is mid-training (a
# median < 3 px was what it reached); trained to 120 it is well inside (seeds 1-5: 0.52-0.80 px).
ITER_ACCURATE = dict(iterations=120, cyc_after=60, rbb_after=60, checkpoint_every=60, log_every=60)


def _mean_error(res):
    gt = gt_track(Q, T, DX, DY)
    inside = (gt[..., 0] > 4) & (gt[..., 0] < 91) & (gt[..., 1] > 4) & (gt[..., 1] < 59)
    return np.linalg.norm(res.tracks - gt, axis=-1)[inside]


@pytest.fixture(scope="module")
def fitted(clip, tmp_path_factory):
    work = tmp_path_factory.mktemp("work_a")
    return Tracker(_backend(), _cfg(work, **ITER_ACCURATE), progress=False).fit(clip), work


def test_track_in_original_pixels_with_known_motion(fitted):
    tr, work = fitted
    res = tr.track(Q)
    assert res.tracks.shape == (3, T, 2) and res.visible.shape == (3, T) and res.confidence.shape == (3, T)
    err = _mean_error(res)
    assert err.mean() < 2.0, err
    for i, (t, x, y) in enumerate(Q):
        assert res.tracks[i, int(t)].tolist() == pytest.approx([x, y])
    assert (work / next(p.name for p in work.iterdir() if p.name.startswith("train_"))).is_dir()


def test_same_seed_identical_and_cached_refit(clip, tmp_path, caplog):
    cfg = _cfg(tmp_path / "a", iterations=12, cyc_after=6, rbb_after=6)
    a = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    b = Tracker(_backend(), cfg.replace(work_dir=str(tmp_path / "b")), progress=False).fit(clip).track(Q)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    np.testing.assert_array_equal(a.visible, b.visible)
    with caplog.at_level(logging.INFO):
        c = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)  # everything cached
    np.testing.assert_array_equal(a.tracks, c.tracks)
    assert "training: 0 iterations" in caplog.text


_CHILD = """
import sys; sys.path.insert(0, {repo!r})
import torch; torch.set_num_threads(1)
import tracker.dino.train
from tests.test_tracker_api import _backend, _cfg, translating_clip, T, DX, DY
from tracker.api import Tracker

step = tracker.dino.train.Trainer.step
def step_then_stop(self, it):
    if it == 7:  # iterations 1-7 done, the last checkpoint is ckpt 6: say so and wait for the SIGKILL
        print("in iteration 8", flush=True)
        sys.stdin.read()
        raise SystemExit("stdin closed before the SIGKILL")
    return step(self, it)
tracker.dino.train.Trainer.step = step_then_stop
Tracker(_backend(), _cfg({work!r}, iterations=20, checkpoint_every=3), progress=False).fit(
    translating_clip(64, 96, T, DX, DY))
"""


def test_killed_training_resumes_from_checkpoint(clip, tmp_path, caplog, one_torch_thread):
    """SIGKILL mid-training, re-run: preprocessing comes from the cache, training resumes from the
    last checkpoint, and the tracks equal those of an uninterrupted run. The child says when it is in
    iteration 8 (one iteration past ckpt 6) and blocks there, so the kill point is fixed, not a race with
    a polling loop. One torch thread here and in the child: the resumed fit mixes the child's iterations
    with this process's, bit-identical only at the same thread count."""
    work = tmp_path / "work"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO), work=str(work)))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when_announced(proc, "in iteration 8")  # the child prints it inside iteration 8, then blocks
    assert sorted(p.name for p in work.glob("train_*/ckpt_*.pt")) == ["ckpt_0000003.pt", "ckpt_0000006.pt"]
    cfg = _cfg(work, iterations=20, checkpoint_every=3)
    with caplog.at_level(logging.INFO):
        resumed = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    assert "resuming training from ckpt_0000006.pt" in caplog.text
    assert "stage features" in caplog.text and "cached" in caplog.text
    fresh = Tracker(_backend(), cfg.replace(work_dir=str(tmp_path / "fresh")), progress=False).fit(clip).track(Q)
    np.testing.assert_array_equal(resumed.tracks, fresh.tracks)


def test_odd_size_vit_backend(tmp_path):
    frames = translating_clip(61, 83, 4, 2, 1)
    be = load_backend("dinov2_vits14", weights="random", stride=7)
    tr = Tracker(be, _cfg(tmp_path, iterations=4, cyc_after=2, rbb_after=2), progress=False).fit(frames)
    g = tr.geometry
    assert (g.image_h, g.image_w) == (61, 83) and (g.input_h - 14) % 7 == 0 and (g.input_w - 14) % 7 == 0
    q = np.array([[0, 30.0, 30.0], [3, 80.0, 60.0], [2, 0.0, 0.0]])
    res = tr.track(q)
    assert res.tracks.shape == (3, 4, 2) and np.isfinite(res.tracks).all()
    assert (res.tracks[..., 0] >= -0.5).all() and (res.tracks[..., 0] <= 82.5).all()
    assert (res.tracks[..., 1] >= -0.5).all() and (res.tracks[..., 1] <= 60.5).all()


def test_user_supplied_backend(clip, tmp_path):
    """Any FeatureBackend subclass plugs in: here patches of raw colour + gradients (patch 8, stride 4)."""
    from cosettle import FeatureBackend

    class PatchColour(FeatureBackend):
        name, feat_dim, patch_size, stride = "patch_colour", 3 * 64 + 2 * 16, 8, 4
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

        def forward_batch(self, x):
            g = x.mean(1, keepdim=True)
            gx = torch.nn.functional.pad(g[..., 1:] - g[..., :-1], (0, 1))
            gy = torch.nn.functional.pad(g[..., 1:, :] - g[..., :-1, :], (0, 0, 0, 1))
            col = torch.nn.functional.unfold(x, 8, stride=4)
            grad = torch.nn.functional.unfold(torch.cat([gx, gy], 1), 4, stride=4)
            h, w = 1 + (x.shape[-2] - 8) // 4, 1 + (x.shape[-1] - 8) // 4
            grad = grad.view(x.shape[0], -1, x.shape[-2] // 4, x.shape[-1] // 4)[..., :h, :w]
            return torch.cat([col.view(x.shape[0], -1, h, w), grad], 1)

    # The same target as the dsift tracker above: mean < 2 px on the exact translation. (It had been a median
    # < 3 px set from the 0.99-2.71 px observed at 60 iterations, when 30 had given up to 6.49 px.) This raw
    # colour backend needs longer than dsift: at 120 iterations seeds 1, 3, 4, 5 give 0.77-0.99 px but seed 2
    # keeps a 36 px wrong match (mean 3.36); at 240 seeds 1-5 give 0.49-0.82 px. The late losses (cycle,
    # refined best buddies) run the last 20 iterations only: the check is this backend plugging in, and they
    # cost twice an early step (late from 120 on: 0.61-1.06 px, twice the time).
    it = dict(iterations=240, cyc_after=220, rbb_after=220, checkpoint_every=120, log_every=120)
    res = Tracker(PatchColour(), _cfg(tmp_path, **it), progress=False).fit(clip).track(Q)
    err = _mean_error(res)
    assert err.mean() < 2.0, err


def test_the_estimate_passed_in_hears_every_stage_and_keeps_the_times(clip, tmp_path, caplog):
    """``fit(video, eta=...)``: the object passed in (no process global) is told of every preprocessing stage,
    every training iteration and the refinement, and holds the stage times the report shows; another estimate
    alive in the same process hears nothing. Without one, the fit makes and logs its own."""
    from tracker.eta import RunETA
    from tracker.memory import time_plan

    cfg = _cfg(tmp_path / "w", iterations=4, cyc_after=2, rbb_after=2, checkpoint_every=2, log_every=2)
    tr = Tracker(_backend(), cfg, progress=False)
    assert tr.work_dir is None and tr.prep is None and tr.train_coverage is None  # set in __init__, not first in fit
    plan = time_plan(T, 64, 96, _backend(), cfg, "dino")
    mine, other = RunETA(plan), RunETA(plan)
    tr.fit(clip, eta=mine)
    assert tr.eta is mine and other.history == [] and all(s.started is None for s in other.stages.values())
    pre = [k for k in plan if k not in ("train", "train+cyc", "refine", "track")]
    assert all(mine.stages[k].finished for k in pre + ["train", "train+cyc", "refine"]), mine.stages
    assert (mine.stages["train"].timed_units, mine.stages["train+cyc"].timed_units) == (2, 2)  # per iteration
    assert list(mine.times) == ["preprocess", "train", "refine"]
    tr.track(Q)
    rep = tr.report()
    assert rep.timings is mine.times and list(rep.timings) == ["preprocess", "train", "refine", "track"]
    assert rep.work_dir == tmp_path / "w" and rep.info["training_coverage"] == tr.train_coverage
    with caplog.at_level(logging.INFO, logger="tracker.eta"):
        again = Tracker(_backend(), cfg, progress=False).fit(clip)  # no estimate passed: its own, logged
    assert again.eta is not mine and isinstance(again.eta, RunETA)
    assert "estimated time about" in caplog.text and "training resumes at iteration 4" in caplog.text
