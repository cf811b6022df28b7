"""dino-flow's agreement radius per backend (tracker/config.py snap_cells): the config's value when set, else
the value measured for the backend's name *and* stride, else 6 cells; inference-only (no retraining)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from cosettle.errors import UserError
from tracker.api import training_key
from tracker.config import DEFAULT_SNAP_CELLS, MEASURED_SNAP_CELLS, TrackerConfig, preset, snap_cells

DINOV2_S14 = SimpleNamespace(name="dinov2_vits14_imgfocus", stride=14)


def test_unset_takes_the_measured_value_for_name_and_stride_only():
    cfg = preset("fast")
    assert cfg.fusion_snap_cells is None and DEFAULT_SNAP_CELLS == 6.0
    assert snap_cells(cfg, DINOV2_S14) == 2.0
    # the same weights at another stride, another backend, a projected one: not measured -> 6
    assert snap_cells(cfg, SimpleNamespace(name="dinov2_vits14_imgfocus", stride=7)) == 6.0
    assert snap_cells(cfg, SimpleNamespace(name="dsift", stride=8)) == 6.0
    assert snap_cells(cfg, SimpleNamespace(name="dinov2_vits14_imgfocus+cosettle", stride=14)) == 6.0
    assert snap_cells(cfg, object()) == 6.0  # a user's backend object without name/stride


def test_a_set_value_wins_even_zero():
    for v in (0.0, 3.0, 6.0):
        assert snap_cells(preset("fast", fusion_snap_cells=v), DINOV2_S14) == v
    assert snap_cells(TrackerConfig(fusion_snap_cells=2), SimpleNamespace(name="dsift", stride=8)) == 2.0


def test_the_table_names_a_registered_backend():
    from cosettle.backends.registry import list_backends
    assert {name for name, _ in MEASURED_SNAP_CELLS} <= set(list_backends())


def test_negative_is_one_error_line():
    with pytest.raises(UserError, match="fusion_snap_cells must be >= 0"):
        TrackerConfig(fusion_snap_cells=-1.0)


def test_unset_and_set_share_the_fit():
    cfg = preset("fast")
    assert training_key(cfg.replace(fusion_snap_cells=2.0)) == training_key(cfg) == "39014f0eba7beb22"


def test_dino_flow_fuses_with_the_backends_radius(monkeypatch):
    """The wiring: FlowGuidedTracker._fuse hands fuse_tracks snap_cells(cfg, its backend) x the cell size and
    head_weight(cfg, its backend) with the config's fusion_head_gate."""
    import numpy as np

    import tracker.fusion as fusion
    from cosettle import load_backend
    from cosettle.io.tracks import TrackResult

    seen = []

    weights, gates = [], []

    def fake_fuse(res, flow_pair, T, snap_px, *a, **kw):
        seen.append(snap_px)
        weights.append(kw["head_weight"])
        gates.append(kw["head_gate"])
        return res.tracks, res.visible, res.confidence

    monkeypatch.setattr(fusion, "fuse_tracks", fake_fuse)
    backend = load_backend("dsift")
    for name, stride, norm, cfg, want, weight in (
            ("dinov2_vits14_imgfocus", 14, True, preset("fast"), 2.0 * 10, 0.75),
            ("dinov2_vits14_imgfocus", 14, False, preset("fast"), 2.0 * 10, 0.0),
            ("dsift", backend.stride, None, preset("fast"), 6.0 * 10, 0.0),
            ("dinov2_vits14_imgfocus", 14, True, preset("fast", fusion_snap_cells=4.0, fusion_head_weight=0.5,
                                                        fusion_head_gate="always"), 4.0 * 10, 0.5)):
        b = load_backend("dsift")
        b.name, b.stride, b.norm = name, stride, norm
        t = fusion.FlowGuidedTracker(b, cfg, progress=False)
        q = np.array([[0.0, 2.0, 2.0]])
        head = TrackResult(np.zeros((1, 2, 2), np.float32), np.ones((1, 2), bool), np.ones((1, 2), np.float32), q)
        monkeypatch.setattr(t, "track_head", lambda queries, occlusion=None, head=head: head)
        monkeypatch.setattr(t, "flow_pair", lambda: None)
        monkeypatch.setattr(t, "cell_px", lambda: 10.0)
        t._frames, t.foreground, t.gate = np.zeros((2, 8, 8, 3), np.uint8), None, None
        t._fuse(q)
        assert seen[-1] == want, (name, stride)
        assert t.fusion_stats.to_dict()["snap_cells"] == want / 10  # run_info.json records the radius used
        assert weights[-1] == t.fusion_stats.to_dict()["head_weight"] == weight  # and the head's share
        assert gates[-1] == cfg.fusion_head_gate  # which points it moves: the config's


@pytest.mark.parametrize("table, field, measured, remeasured, fixed", [
    ("MEASURED_SNAP_CELLS", "fusion_snap_cells", 3.0, 4.0, 6.0),
    ("MEASURED_HEAD_WEIGHT", "fusion_head_weight", 0.5, 0.25, 0.2)])
def test_a_remeasured_table_invalidates_cached_fused_predictions(tmp_path, monkeypatch, table, field, measured,
                                                                  remeasured, fixed):
    """The evaluator keys dino-flow predictions on a per-backend table (the radius, the head weight) when the
    config leaves its field unset: the config alone (the field None) does not change when the table does."""
    import numpy as np

    import tracker.config as config
    from badja_eval.runner import Method, Runner, Task

    task = Task(key="clip", load=lambda: None, queries=np.zeros((1, 3)), shape=(4, 8, 8), content="c")
    fused, head = Method("dino-flow", "dsift"), Method("dino", "dsift")
    runner = Runner(cache_dir=tmp_path, preset="fast")
    before = runner.fingerprint(task, fused), runner.fingerprint(task, head)
    monkeypatch.setitem(getattr(config, table), ("dsift", 8), measured)
    assert runner.fingerprint(task, fused) != before[0]
    assert runner.fingerprint(task, head) == before[1]  # the head does not use it: its entries stay valid
    # a value set explicitly is in the config itself; the table is then irrelevant
    pinned = Runner(cache_dir=tmp_path, preset="fast", tracker_overrides={"dino-flow": {field: fixed}})
    key = pinned.fingerprint(task, fused)
    monkeypatch.setitem(getattr(config, table), ("dsift", 8), remeasured)
    assert pinned.fingerprint(task, fused) == key


def test_verify_ncc_of_minus_one_is_refused():
    # -1 is the peak TemplateVerifier reports for a patch it cannot compare: a threshold of -1 would verify it
    with pytest.raises(UserError, match=r"fusion_verify_ncc in \(-1, 1\]"):
        TrackerConfig(fusion_verify_ncc=-1.0)
    assert TrackerConfig(fusion_verify_ncc=-0.5).fusion_verify_ncc == -0.5
