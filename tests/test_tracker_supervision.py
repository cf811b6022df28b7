"""What supervision DINO-Tracker training actually receives (coverage counters), that the counters
survive a resume, and that fitting leaves the caller's backend untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from tests._tracker_synth import synthetic_prep, translating_clip
from tracker.api import Tracker
from tracker.resolution import with_resolution
from tracker.config import preset
from tracker.dino.train import Coverage, Trainer

T = 5


def _cfg(**kw):
    base = dict(iterations=6, batch_size=32, cyc_after=100, rbb_after=100, checkpoint_every=2, log_every=2,
                cl_pairs=3, cl_points=16, seed=1)
    base.update(kw)
    return preset("fast", **base)


@pytest.fixture(scope="module")
def prep():
    return synthetic_prep(load_backend("dsift", patch_size=8, stride=4), t=T)


def _one_bb(prep):
    """One best buddy (the same cell centre) for every ordered pair (s, t), s != t."""
    xy = prep.geometry.cell_centers("input").reshape(-1, 2)[[40]].astype(np.float32)
    entry = {"src": xy, "dst": xy, "cos": np.ones(1, np.float32), "r": np.zeros(1, np.float32)}
    return {(s, t): entry for s in range(T) for t in range(T) if s != t}


def test_coverage_counts_missing_pairs(prep):
    prep.best_buddies = {}
    tr = Trainer(prep, _cfg())
    tr.run(progress=False)
    s = tr.coverage.summary()
    assert s["iterations"] == 6 and s["dbb_pairs_per_iteration"] == 3.0
    assert s["dbb_missing_share"] == 1.0 and s["dbb_used_share"] == 0.0
    assert s["active_share"]["flow"] == 1.0 and "dbb" not in s["active_share"]


def test_coverage_counts_used_pairs(prep):
    prep.best_buddies = _one_bb(prep)
    tr = Trainer(prep, _cfg())
    tr.run(progress=False)
    s = tr.coverage.summary()
    assert s["dbb_used_share"] == 1.0 and s["dbb_missing_share"] == 0.0
    assert s["dbb_points_per_iteration"] == 3.0  # 3 pairs x 1 best buddy
    assert s["active_share"]["dbb"] == 1.0


def test_coverage_survives_resume(prep, tmp_path):
    prep.best_buddies = _one_bb(prep)
    whole = Trainer(prep, _cfg(), tmp_path / "a")
    whole.run(progress=False)
    first = Trainer(prep, _cfg(), tmp_path / "b")
    first.run(progress=False, stop_after=4)
    second = Trainer(prep, _cfg(), tmp_path / "b")
    second.run(progress=False)
    assert second.coverage == whole.coverage
    assert Coverage.load(tmp_path / "b" / "coverage.json", 5) == Coverage()  # stale iteration: not used


def test_fit_does_not_change_the_callers_backend(tmp_path):
    backend = load_backend("dsift", patch_size=8, stride=4)
    assert backend.resolution is None
    clip = translating_clip(96, 128, 3, 2, 1)
    cfg = _cfg(iterations=2, resolution=64, work_dir=str(tmp_path / "w"))
    tr = Tracker(backend, cfg, progress=False).fit(clip)
    assert backend.resolution is None
    assert tr.work_backend.resolution == 64 and tr.work_backend is not backend
    assert tr.geometry.input_h == 64
    assert with_resolution(backend, None) is backend


def test_with_resolution_reaches_a_wrapped_base():
    from cosettle.backends.projected import ProjectedBackend

    base = load_backend("dsift", patch_size=8, stride=4)
    proj = ProjectedBackend(base, torch.nn.Identity(), out_dim=base.feat_dim)
    moved = with_resolution(proj, 48)
    assert moved.base is not base and moved.base.resolution == 48 and base.resolution is None
    assert moved.geometry(96, 128).input_h == 48 and proj.geometry(96, 128).input_h == 96


def test_paper_preset_supervises_every_drawn_pair(tmp_path):
    """``paper``: best buddies on demand for every pair the trainer draws (none missing), separate FG/BG
    frame draws, the anchor occlusion rule, trajectories from every pixel."""
    cfg = preset("paper", iterations=3, batch_size=32, cnn_width=8, checkpoint_every=3, log_every=3,
                 cl_points=16, cyc_points=16, work_dir=str(tmp_path / "w"))
    assert cfg.occlusion == "anchors" and cfg.separate_fg_bg_frames
    assert cfg.preprocess.traj_stride == 1 and cfg.preprocess.bb_on_demand
    clip = translating_clip(48, 64, 4, 2, 1)
    tr = Tracker(load_backend("dsift", patch_size=8, stride=4), cfg, progress=False).fit(clip)
    cov = tr.train_coverage
    assert cov["iterations"] == 3 and cov["dbb_pairs_per_iteration"] == cfg.cl_pairs
    assert cov["dbb_missing_share"] == 0.0
    assert cov["dbb_used_share"] + cov["dbb_empty_share"] == pytest.approx(1.0)
    # every pixel seeds a trajectory at frame 0 (stride 1): at least H*W of them
    assert tr.prep.stats["trajectories"]["num_trajectories"] >= 48 * 64
