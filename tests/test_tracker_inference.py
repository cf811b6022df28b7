"""Training + inference on a generated clip with known motion; determinism and exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from tests._tracker_synth import gt_track, synthetic_prep
from tracker.config import preset
from tracker.dino.inference import TrackInference, refined_features
from tracker.dino.sampler import TrajectorySampler
from tracker.dino.train import Trainer, latest_checkpoint

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
    # 120 iterations: at 60 the tracker is still mid-training and one draw in five (seed 3, 1 thread) left a
    # 33 px wrong match among the 24 points (mean 2.15 px; the median, 0.77 px, hid it). At 120: seeds 1-5 give
    # means of 0.47-0.57 px on 1 thread, seeds 1/3/4 0.57/0.47/0.62 px on 2, the largest error 1.67 px.
    tr, model = _fit(prep, _cfg(iterations=120, cyc_after=60, rbb_after=60, log_every=60, checkpoint_every=60))
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
def test_known_motion_error_below_two_px(prep, fitted, rule):
    """The mean error on an exact integer translation is below 2 px (half a dsift feature cell of 4 px):
    the bound of the first version of this test, restored (it had become median < 2 and 85 % < 4 px)."""
    tr, model, ref = fitted
    inf = TrackInference(model, ref, prep.geometry, tr.cfg)
    tracks, vis, conf = inf.track(QUERIES, rule)
    gt = gt_track(QUERIES, T, DX, DY)
    inside = (gt[..., 0] > 4) & (gt[..., 0] < 91) & (gt[..., 1] > 4) & (gt[..., 1] < 59)
    err = np.linalg.norm(tracks - gt, axis=-1)[inside]
    assert err.mean() < 2.0, err
    assert vis[inside].mean() > 0.8
    assert conf.shape == vis.shape and ((conf >= 0) & (conf <= 1)).all()
    assert _visible_is_confidence_at_least_half(vis, conf)
    # the query frame keeps the query point
    for i, (t, x, y) in enumerate(QUERIES):
        assert tracks[i, int(t)].tolist() == pytest.approx([x, y])


def _visible_is_confidence_at_least_half(vis, conf) -> bool:
    """visible == (confidence >= 0.5) by construction (tracker.dino.inference's docstring): both rules threshold
    the quantity the confidence's sigmoid is centred on, so they may differ only where that sigmoid's
    argument is within float32 rounding of 0, i.e. where the confidence is within 1e-6 of 0.5."""
    differ = vis != (conf >= 0.5)
    return bool((np.abs(conf[differ] - 0.5) < 1e-6).all())


@pytest.mark.parametrize("rule", ["fb", "anchors"])
def test_visible_is_confidence_at_least_half(prep, fitted, rule):
    """On clips where points do get lost (the refined maps reversed in time, or drowned in noise), so that
    both outcomes occur: every disagreement between visible and confidence >= 0.5 is a rounding tie."""
    tr, model, ref = fitted
    gen = torch.Generator().manual_seed(0)
    vis_all, conf_all = [], []
    for maps in (ref.flip(0), ref + 3 * ref.std() * torch.randn(ref.shape, generator=gen)):
        _, vis, conf = TrackInference(model, maps, prep.geometry, tr.cfg).track(QUERIES, rule)
        vis_all.append(vis)
        conf_all.append(conf)
    vis, conf = np.concatenate(vis_all), np.concatenate(conf_all)
    assert vis.any() and (~vis).any(), vis  # the check below sees both outcomes
    assert _visible_is_confidence_at_least_half(vis, conf), (vis.astype(int), conf)


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
    from tracker.dino.sampling import NormalisedMaps, l2n

    maps, full = NormalisedMaps(half, block=4), l2n(half.float())
    for f in (0, 5, 3, 4, 1):
        assert torch.equal(maps[f], full[f])
    # and the rounding matters at all (so the check above compares something)
    assert not torch.equal(half.float(), ref)
