"""``fuse_tracks(head_weight=..., head_gate=...)`` and the weight's per-backend resolution (tracker/fusion.py,
tracker/config.py): where consistent flow and a seeing head agree, the reported position moves that share of the
way to the head -- by default only for a point whose flow has failed a check earlier in the pass -- and the chain
goes on from flow's position. Hand-built flows and heads; expected values derived in the comments."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cosettle.errors import UserError
from cosettle.io.tracks import TrackResult
from tracker.config import MEASURED_HEAD_WEIGHT, TrackerConfig, head_weight
from tracker.fusion import BROKEN_AGREE, FLOW_AGREE, FLOW_FAR, FLOW_UNSEEN, QUERY, FusionStats, fuse_tracks

H, W, T = 80, 100, 3


def _flows(k):
    fwd, bwd = np.zeros((H, W, 2), np.float32), np.zeros((H, W, 2), np.float32)
    fwd[..., 0], bwd[..., 0] = 1.0, -1.0  # (+1, 0), cancelled backwards: consistent everywhere
    return fwd, bwd


def _fuse(weight=None, gate="always"):
    """Flow's path is x + t. q0 (40, 40): head (43, 40) at frame 1 and (42, 41) at frame 2, within the 3-px
    radius of flow's (41, 40) and (42, 40): agrees. q1 (20, 20): head 10 px off at frame 1 (far), on the path
    at frame 2. q2 (60, 60): head blind at frames 1 and 2."""
    q = np.array([[0, 40.0, 40.0], [0, 20.0, 20.0], [0, 60.0, 60.0]], np.float32)
    head = np.zeros((3, T, 2), np.float32)
    head[:, :, 0] = q[:, None, 1] + np.arange(T)
    head[:, :, 1] = q[:, None, 2]
    head[0, 1], head[0, 2] = (43, 40), (42, 41)
    head[1, 1] = (31, 20)
    dvis = np.ones((3, T), bool)
    dvis[2, 1:] = False
    st = FusionStats()
    kw = {} if weight is None else {"head_weight": weight}  # None: the function's default
    kw["head_gate"] = gate  # "always": flow never fails here, so the default gate would move nothing
    out = fuse_tracks(TrackResult(head, dvis, np.ones((3, T), np.float32), q), _flows, T, 3.0, 1.5, None,
                      stats=st, **kw)
    return out, st


def test_where_flow_and_head_agree_the_report_moves_toward_the_head_and_the_chain_stays_on_flow():
    (tracks, visible, conf), st = _fuse(0.5)
    assert st.state[0].tolist() == [0, FLOW_AGREE, FLOW_AGREE]
    # frame 1: 41 + 0.5 * (43 - 41) = 42; frame 2 chains from flow's 41 (not the reported 42): f = (42, 40),
    # report (42, 40) + 0.5 * ((42, 41) - (42, 40)) = (42, 40.5). Chaining from the report would give x 43 / 42.5.
    assert tracks[0].tolist() == [[40, 40], [42, 40], [42, 40.5]]
    # far (frame 1) and blind heads leave flow's position; q1's head is back on the path at frame 2 (agrees)
    assert st.state[1].tolist() == [0, FLOW_FAR, FLOW_AGREE] and st.state[2].tolist() == [0, FLOW_UNSEEN, FLOW_UNSEEN]
    assert tracks[1].tolist() == [[20, 20], [21, 20], [22, 20]]
    assert tracks[2].tolist() == [[60, 60], [61, 60], [62, 60]]
    assert tracks.dtype == np.float32


def test_weight_zero_reports_flow_and_the_weight_changes_nothing_else():
    (flow_only, vis0, conf0), _ = _fuse(0.0)
    (weighted, vis1, conf1), _ = _fuse(1.0)
    assert flow_only[0].tolist() == [[40, 40], [41, 40], [42, 40]]  # flow's path, as before the option
    (default, _, _), _ = _fuse()
    assert default.tolist() == flow_only.tolist()  # unset, fuse_tracks reports flow's positions (the gate's pre-pass)
    assert weighted[0].tolist() == [[40, 40], [43, 40], [42, 41]]  # weight 1: the head's positions there
    assert vis0.tolist() == vis1.tolist() and conf0.tolist() == conf1.tolist()


def test_the_weight_resolves_per_backend_and_the_config_wins(monkeypatch):
    import tracker.config as config

    dinov2 = SimpleNamespace(name="dinov2_vits14_imgfocus", stride=14, norm=True)
    # measured (docs/tracking.md): DINOv2 ViT-S/14 at stride 14 with the final LayerNorm moves points whose flow
    # failed 0.75 of the way, and so at stride 7 (the backend's default, raw tokens); its raw tokens at stride 14
    # did not pass: 0
    assert MEASURED_HEAD_WEIGHT == {("dinov2_vits14_imgfocus", 14, "norm"): 0.75, ("dinov2_vits14_imgfocus", 7): 0.75}
    assert head_weight(TrackerConfig(), SimpleNamespace(name="dinov2_vits14_imgfocus", stride=7, norm=False)) == 0.75
    assert head_weight(TrackerConfig(), dinov2) == 0.75
    assert head_weight(TrackerConfig(), SimpleNamespace(name="dinov2_vits14_imgfocus", stride=14, norm=False)) == 0.0
    assert head_weight(TrackerConfig(), SimpleNamespace(name="dinov2_vits14_imgfocus", stride=14)) == 0.0
    assert head_weight(TrackerConfig(), object()) == 0.0  # a user's backend without name/stride
    # a table entry applies to its backend and stride only, and a value in the config wins over it
    monkeypatch.setitem(config.MEASURED_HEAD_WEIGHT, ("dinov2_vits14_imgfocus", 14, "norm"), 0.4)
    assert head_weight(TrackerConfig(), dinov2) == 0.4
    assert head_weight(TrackerConfig(), SimpleNamespace(name="dsift", stride=8)) == 0.0
    assert head_weight(TrackerConfig(), SimpleNamespace(name="dinov2_vits14_imgfocus", stride=7, norm=True)) == 0.0
    assert head_weight(TrackerConfig(fusion_head_weight=0.0), dinov2) == 0.0
    assert head_weight(TrackerConfig(fusion_head_weight=0.3), SimpleNamespace(name="dsift", stride=8)) == 0.3


@pytest.mark.parametrize("stride, norm, weight", [(14, True, 0.75), (14, False, 0.0), (7, False, 0.75),
                                                  (7, True, 0.0)])
def test_the_real_dinov2_backend_resolves_by_its_stride_and_norm_flag(stride, norm, weight):
    """The table's key is read from the backend class itself (random init: no weights needed)."""
    from cosettle import load_backend

    backend = load_backend("dinov2_vits14_imgfocus", weights="random", stride=stride, norm=norm)
    assert head_weight(TrackerConfig(), backend) == weight


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_a_weight_outside_zero_one_is_refused(bad):
    with pytest.raises(UserError, match=r"fusion_head_weight must be in \[0, 1\]"):
        TrackerConfig(fusion_head_weight=bad)
    assert TrackerConfig(fusion_head_weight=1.0).fusion_head_weight == 1.0


def test_an_unset_weight_is_left_out_of_the_evaluators_cache_key(tmp_path):
    """Predictions cached before the option existed stay valid: the field is keyed only when set."""
    from badja_eval.runner import Method, Runner, Task, _plain

    assert "fusion_head_weight" not in _plain(TrackerConfig())
    assert _plain(TrackerConfig(fusion_head_weight=0.0))["fusion_head_weight"] == 0.0
    task = Task(key="clip", load=lambda: None, queries=np.zeros((1, 3)), shape=(4, 8, 8), content="c")
    unset = Runner(cache_dir=tmp_path, preset="fast").fingerprint(task, Method("dino", "dsift"))
    set_ = Runner(cache_dir=tmp_path, preset="fast", tracker_overrides={"dino": {"fusion_head_weight": 0.5}})
    assert set_.fingerprint(task, Method("dino", "dsift")) != unset


def test_the_gate_keeps_cached_heads_valid_and_rekeys_a_set_weights_fused_predictions(tmp_path):
    """The default gate stays out of the key (cached ``dino`` heads stay valid), but a set weight with the
    default gate is keyed apart from the same weight cached before the gate existed (it moved every point).
    The literal keys are those main dc1743e (before the gate) computed for the same task."""
    from badja_eval.runner import Method, Runner, Task, _plain

    assert "fusion_head_gate" not in _plain(TrackerConfig())
    assert _plain(TrackerConfig(fusion_head_gate="always"))["fusion_head_gate"] == "always"
    task = Task(key="clip", load=lambda: None, queries=np.zeros((1, 3)), shape=(4, 8, 8), content="c")

    def key(tracker, **over):
        runner = Runner(cache_dir=tmp_path, preset="fast", tracker_overrides={tracker: over} if over else {})
        return runner.fingerprint(task, Method(tracker, "dsift"))

    assert key("dino") == "ec88b77f27bd94a48bac"  # unchanged: no cached head is recomputed
    gated = key("dino-flow", fusion_head_weight=0.5)
    assert gated != "35211fca131d362cb496"  # the same override's key before the gate
    assert gated != key("dino-flow", fusion_head_weight=0.5, fusion_head_gate="always")


def _broken_flows(t):
    """Flow (+1, 0) everywhere, consistent except where a step lands in two patches of the backward flow set
    to (+2, 0): around (41, 40) at step 0 -> 1 and around (71, 60) at step 1 -> 2. There the forward-backward
    error is |(+1) + (+2)| = 3 px > fb_px 1.5: flow fails its check."""
    fwd, bwd = _flows(t)
    if t == 0:
        bwd[38:43, 39:44] = (2.0, 0.0)
    if t == 1:
        bwd[58:63, 69:74] = (2.0, 0.0)
    return fwd, bwd


def _fuse_gated(gate):
    """T = 4. q0 (40, 40) at frame 0: flow fails at step 0 -> 1 (head (42, 40) agrees: followed, "broken flow,
    head agrees"), then is consistent; the head sits 2 px right of flow's path at frames 2 and 3 (agrees).
    q1 (20, 20) at frame 0: flow never fails; the head 2 px right at frames 1-3. q2 (70, 60) queried at frame 1:
    flow fails forwards at step 1 -> 2 (head agrees), is consistent at 2 -> 3; the head 2 px right at frames 0,
    2 and 3 -- frame 0 is reached by the backward pass, which starts again from the query."""
    T4 = 4
    q = np.array([[0, 40.0, 40.0], [0, 20.0, 20.0], [1, 70.0, 60.0]], np.float32)
    t0 = q[:, 0].astype(int)
    head = np.zeros((3, T4, 2), np.float32)
    head[:, :, 0] = q[:, None, 1] + np.arange(T4) - t0[:, None] + 2.0  # flow's path, 2 px to the right
    head[:, :, 1] = q[:, None, 2]
    head[np.arange(3), t0] = q[:, 1:]
    st = FusionStats()
    out = fuse_tracks(TrackResult(head, np.ones((3, T4), bool), np.ones((3, T4), np.float32), q), _broken_flows,
                      T4, 3.0, 1.5, None, stats=st, head_weight=0.5, head_gate=gate)
    return out, st


def test_the_default_gate_moves_only_points_whose_flow_failed_earlier_in_the_pass():
    (tracks, visible, _), st = _fuse_gated("flow-failed")
    assert st.state[0].tolist() == [QUERY, BROKEN_AGREE, FLOW_AGREE, FLOW_AGREE]
    assert st.state[1].tolist() == [QUERY, FLOW_AGREE, FLOW_AGREE, FLOW_AGREE]
    assert st.state[2].tolist() == [FLOW_AGREE, QUERY, BROKEN_AGREE, FLOW_AGREE]
    # q0: frame 1 follows the broken-but-agreeing flow, 41 (that state is never moved); from frame 2 on its flow
    # has failed, so 42 + 0.5 * 2 = 43 and 43 + 1 = 44
    assert tracks[0, :, 0].tolist() == [40, 41, 43, 44]
    # q1: flow never failed -> flow's positions, pixel-precise, although the head agrees 2 px away
    assert tracks[1, :, 0].tolist() == [20, 21, 22, 23]
    # q2: frame 3 after the forward failure: 72 + 1 = 73; frame 0, backwards, where flow has not failed: 69
    assert tracks[2, :, 0].tolist() == [69, 70, 71, 73]
    assert visible.all()


def test_gate_always_moves_every_agreeing_point_and_the_gate_changes_only_positions():
    (gated, vis_g, conf_g), _ = _fuse_gated("flow-failed")
    (always, vis_a, conf_a), _ = _fuse_gated("always")
    assert always[0, :, 0].tolist() == [40, 41, 43, 44]
    assert always[1, :, 0].tolist() == [20, 22, 23, 24]  # 21 + 1, 22 + 1, 23 + 1
    assert always[2, :, 0].tolist() == [70, 70, 71, 73]  # frame 0: 69 + 0.5 * 2
    assert vis_g.tolist() == vis_a.tolist() and conf_g.tolist() == conf_a.tolist()
    with pytest.raises(ValueError, match="head_gate must be one of"):
        _fuse(0.5, gate="sometimes")


def test_an_unknown_gate_is_refused_in_the_config():
    with pytest.raises(UserError, match="unknown fusion_head_gate 'sometimes'"):
        TrackerConfig(fusion_head_gate="sometimes")
    assert TrackerConfig().fusion_head_gate == "flow-failed"
