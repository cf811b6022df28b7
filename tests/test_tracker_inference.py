"""Training + inference on a generated clip with known motion; determinism and exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from tests._tracker_synth import gt_track, synthetic_prep
from tracker.config import preset
from tracker.inference import TrackInference, refined_features
from tracker.sampler import TrajectorySampler
from tracker.train import Trainer, latest_checkpoint

torch.set_num_threads(1)

DX, DY, T = 3, 1, 6


@pytest.fixture(scope="module")
def prep():
    return synthetic_prep(load_backend("dsift", patch_size=8, stride=4), t=T, dx=DX, dy=DY)


def _cfg(**kw):
    base = dict(iterations=60, batch_size=128, cyc_after=30, rbb_after=30, log_every=20,
                checkpoint_every=20, cl_points=64, cyc_points=64, seed=3)
    base.update(kw)
    return preset("fast", **base)


def _fit(prep, cfg, ckpt=None, stop_after=None):
    tr = Trainer(prep, cfg, ckpt)
    model = tr.run(progress=False, stop_after=stop_after)
    return tr, model


@pytest.fixture(scope="module")
def fitted(prep):
    tr, model = _fit(prep, _cfg())
    ref = refined_features(model, prep.frames, prep.features, tr.scale, prep.geometry)
    return tr, model, ref


QUERIES = np.array([[0, 40.0, 30.0], [2, 55.0, 20.0], [5, 30.0, 40.0], [3, 47.5, 33.25]])


def test_sampler_pairs_follow_trajectories(prep):
    s = TrajectorySampler(prep.trajectories, prep.traj_fg, 64, 0.5, 4)
    b = s.sample(np.random.default_rng(0))
    assert 2 <= len(b.frames) <= 4 and (b.src_fi != b.tgt_fi).all()
    ts, tt = b.frames[b.src_fi], b.frames[b.tgt_fi]
    # known motion: target = source - (dx, dy) * (t_tgt - t_src)
    np.testing.assert_allclose(b.tgt_xy, b.src_xy - np.stack([DX * (tt - ts), DY * (tt - ts)], 1), atol=1e-4)


@pytest.mark.parametrize("rule", ["fb", "anchors"])
def test_known_motion_error_below_a_few_px(prep, fitted, rule):
    tr, model, ref = fitted
    inf = TrackInference(model, ref, prep.geometry, tr.cfg)
    tracks, vis, conf = inf.track(QUERIES, rule)
    gt = gt_track(QUERIES, T, DX, DY)
    inside = (gt[..., 0] > 4) & (gt[..., 0] < 91) & (gt[..., 1] > 4) & (gt[..., 1] < 59)
    err = np.linalg.norm(tracks - gt, axis=-1)[inside]
    assert np.median(err) < 2.0 and (err < 4).mean() > 0.85, err
    assert vis[inside].mean() > 0.8
    assert conf.shape == vis.shape and ((conf >= 0) & (conf <= 1)).all()
    assert np.array_equal(vis, conf >= 0.5) or (vis == (conf >= 0.5)).mean() > 0.95
    # the query frame keeps the query point
    for i, (t, x, y) in enumerate(QUERIES):
        assert tracks[i, int(t)].tolist() == pytest.approx([x, y])


def test_head_evaluations_fb_linear_anchors_quadratic(prep, fitted):
    tr, model, ref = fitted
    q = QUERIES[:2]
    fb = TrackInference(model, ref, prep.geometry, tr.cfg)
    fb.track(q, "fb")
    assert fb.stats["head_evals"] == 2 * len(q) * T  # forward + one backward per frame
    an = TrackInference(model, ref, prep.geometry, tr.cfg)
    an.track(q, "anchors")
    assert len(q) * T < an.stats["head_evals"] <= len(q) * T + len(q) * T * T


def test_same_seed_same_model_and_resume_is_exact(prep, tmp_path):
    cfg = _cfg(iterations=16, checkpoint_every=6, cyc_after=8, rbb_after=8)
    _, m1 = _fit(prep, cfg)
    _, m2 = _fit(prep, cfg)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # interrupted after 9 iterations (last checkpoint at 6), then resumed to the end
    tr, _ = _fit(prep, cfg, tmp_path, stop_after=9)
    assert latest_checkpoint(tmp_path).name == "ckpt_0000006.pt"
    tr2 = Trainer(prep, cfg, tmp_path)
    assert tr2.resume() == 6
    m3 = Trainer(prep, cfg, tmp_path).run(progress=False)
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)
    _, m4 = _fit(prep, cfg.replace(seed=4))
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m4.state_dict().values()))

@pytest.mark.parametrize("rule", ["fb", "anchors"])
def test_float16_refined_tracks_equal_the_same_values_in_float32(prep, fitted, rule):
    """What Tracker holds (float16, computed a chunk at a time; normalised maps made 4 frames at a time)
    tracks exactly like those values in float32 with the whole clip's maps: the memory saving changes no
    output bit."""
    tr, model, ref = fitted
    half = refined_features(model, prep.frames, prep.features, tr.scale, prep.geometry, chunk=2,
                            dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, ref.half())
    a = TrackInference(model, half, prep.geometry, tr.cfg.replace(infer_block_frames=4)).track(QUERIES, rule)
    whole = TrackInference(model, half.float(), prep.geometry, tr.cfg.replace(infer_block_frames=T))
    b = whole.track(QUERIES, rule)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    # the blocks of normalised maps hold the values of the whole clip's normalised copy
    from tracker.sampling import NormalisedMaps, l2n

    maps, full = NormalisedMaps(half, block=4), l2n(half.float())
    for f in (0, 5, 3, 4, 1):
        assert torch.equal(maps[f], full[f])
    # and the rounding matters at all (so the check above compares something)
    assert not torch.equal(half.float(), ref)
