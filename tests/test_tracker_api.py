"""Tracker API end to end on generated clips: original-pixel outputs, caching, determinism, resume
after a killed process, odd sizes with a ViT backend."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from tests._tracker_synth import gt_track, translating_clip
from tracker.api import Tracker
from tracker.config import preset

torch.set_num_threads(1)
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


@pytest.fixture(scope="module")
def fitted(clip, tmp_path_factory):
    work = tmp_path_factory.mktemp("work_a")
    return Tracker(_backend(), _cfg(work), progress=False).fit(clip), work


def test_track_in_original_pixels_with_known_motion(fitted):
    tr, work = fitted
    res = tr.track(Q)
    assert res.tracks.shape == (3, T, 2) and res.visible.shape == (3, T) and res.confidence.shape == (3, T)
    gt = gt_track(Q, T, DX, DY)
    inside = (gt[..., 0] > 4) & (gt[..., 0] < 91) & (gt[..., 1] > 4) & (gt[..., 1] < 59)
    err = np.linalg.norm(res.tracks - gt, axis=-1)[inside]
    assert np.median(err) < 3.0 and (err < 5).mean() > 0.8, err
    for i, (t, x, y) in enumerate(Q):
        assert res.tracks[i, int(t)].tolist() == pytest.approx([x, y])
    assert (work / next(p.name for p in work.iterdir() if p.name.startswith("train_"))).is_dir()


def test_same_seed_identical_and_cached_refit(fitted, clip, tmp_path, caplog):
    tr, work = fitted
    a = tr.track(Q)
    b = Tracker(_backend(), _cfg(tmp_path), progress=False).fit(clip).track(Q)  # fresh work folder
    np.testing.assert_array_equal(a.tracks, b.tracks)
    np.testing.assert_array_equal(a.visible, b.visible)
    with caplog.at_level(logging.INFO):
        c = Tracker(_backend(), _cfg(work), progress=False).fit(clip).track(Q)  # everything cached
    np.testing.assert_array_equal(a.tracks, c.tracks)
    assert "training: 0 iterations" in caplog.text


_CHILD = """
import sys; sys.path.insert(0, {repo!r})
import torch; torch.set_num_threads(1)
from tests.test_tracker_api import _backend, _cfg, translating_clip, T, DX, DY
from tracker.api import Tracker
Tracker(_backend(), _cfg({work!r}, iterations=20, checkpoint_every=3), progress=False).fit(
    translating_clip(64, 96, T, DX, DY))
"""


def test_killed_training_resumes_from_checkpoint(clip, tmp_path, caplog):
    """SIGKILL mid-training, re-run: preprocessing comes from the cache, training resumes from the
    last checkpoint, and the tracks equal those of an uninterrupted run."""
    work = tmp_path / "work"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO), work=str(work)))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ckpts = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = [p for p in work.glob("train_*/ckpt_*.pt") if p.name != "ckpt_0000000.pt"]
        if ckpts:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpts, "no checkpoint written before the deadline"
    cfg = _cfg(work, iterations=20, checkpoint_every=3)
    with caplog.at_level(logging.INFO):
        resumed = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    assert "resuming training from ckpt_" in caplog.text
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

    # 60 iterations, not the module's 30: at 30 this backend's tracker is still mid-training and the
    # median error is a coin flip of the sampler's draws (OpenCV 4.14, seeds 1-5: 0.87-6.49 px). OpenCV 5's
    # DIS flow differs by <= 0.01 px (same parameters), which changes the trajectory count (2606 -> 2679),
    # hence the draws, and moved seed 5 from 0.87 to 3.2-3.9 px. At 60: 0.99-2.71 px for both versions.
    cfg = _cfg(tmp_path, iterations=60)
    res = Tracker(PatchColour(), cfg, progress=False).fit(clip).track(Q)
    gt = gt_track(Q, T, DX, DY)
    inside = (gt[..., 0] > 4) & (gt[..., 0] < 91) & (gt[..., 1] > 4) & (gt[..., 1] < 59)
    err = np.linalg.norm(res.tracks - gt, axis=-1)[inside]
    assert np.median(err) < 3.0, err
