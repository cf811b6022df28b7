"""dino-flow's training gate (``fusion_train``, tracker/fusion_gate.py): a clip whose flow holds is tracked
without training and gets flow's answer; a clip where flow breaks, or a point leaves the foreground, trains
and gets exactly what training first gives; ``never`` never trains; the setting is not in the training key.
What ran is read from the trainer itself (a trainer that refuses to run, or one that counts its runs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tracker.commands.track as track_command
from cosettle.backends.registry import load_backend
from cosettle.errors import UserError
from cosettle.io.tracks import TrackResult
from cosettle.io.video import write_video
from tests._tracker_synth import texture, translating_clip
from tracker import build_tracker
from tracker.api import training_key
from tracker.config import preset
from tracker.dino.train import Trainer
from tracker.eta import RunETA
from tracker.fusion import fuse_tracks
from tracker.fusion_gate import blind_head, decide, off_foreground_runs, reuse_flows

T, DX, DY, H, W = 6, 3, 1, 64, 96
Q = np.array([[0, 40.0, 30.0], [2, 50.0, 25.0], [5, 30.0, 20.0]])  # forwards only, both ways, backwards only


class Trained(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Any training fails the test."""
    def refuse(self, *args, **kwargs):
        raise Trained("the DINO-Tracker trainer ran")
    monkeypatch.setattr(Trainer, "run", refuse)


@pytest.fixture
def trainer_runs(monkeypatch):
    """A list that gets one entry per training run."""
    runs, run = [], Trainer.run

    def counted(self, *args, **kwargs):
        runs.append(1)
        return run(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "run", counted)
    return runs


def _cfg(tmp_path, name, mode="auto", **kw):
    return preset("fast", iterations=20, batch_size=64, cyc_after=15, rbb_after=15, checkpoint_every=10,
                  log_every=10, cl_points=32, cyc_points=32, seed=3, work_dir=str(tmp_path / name),
                  fusion_train=mode, **kw)


def _dino_flow(cfg):
    return build_tracker("dino-flow", load_backend("dsift", patch_size=8, stride=4), cfg, progress=False)


def _broken_clip():
    clip = translating_clip(H, W, T, DX, DY)
    clip[3] = texture(H, W, seed=7)  # a frame of another scene (a cut): flow's checks fail around it
    return clip


def _flow(clip, q):
    return build_tracker("flow", progress=False).fit(clip).track(q)


# -- the tracker ------------------------------------------------------------------------------------------
def test_flow_that_holds_skips_training_and_returns_flows_answer(tmp_path, no_training):
    clip = translating_clip(H, W, T, DX, DY)
    fg = np.ones((T, H, W), bool)  # every query on the foreground, and flow keeps them there (and in frame)
    tr = _dino_flow(_cfg(tmp_path, "w")).fit(clip, fg)
    res = tr.track(Q)
    flow = _flow(clip, Q)
    np.testing.assert_array_equal(res.tracks, flow.tracks)
    assert res.visible.all()
    np.testing.assert_allclose(res.confidence, flow.confidence, rtol=0, atol=1e-6)  # flow's own confidence
    assert tr.fusion_stats.to_dict()["gate"] == {"mode": "auto", "queries": 3, "need_head": 0, "broke": 0,
                                                 "left_foreground": 0, "trained": False}
    work = tmp_path / "w"
    assert not list(work.glob("train_*")) and not list(work.glob("trajectories*"))  # no fit was written
    assert list(work.glob("masks-*"))  # the stage the gate read, cached for a fit that may follow


@pytest.mark.parametrize("gate, trains", [("flow-failed", False), ("always", True)])
def test_a_weight_on_every_point_trains_where_flow_holds(tmp_path, no_training, gate, trains):
    """With a head weight, the default gate still skips training where flow holds (it moves only points whose
    flow failed); gate "always" lets the head move any agreeing point, so the pre-pass cannot stand in."""
    clip = translating_clip(H, W, T, DX, DY)
    tr = _dino_flow(_cfg(tmp_path, "w", fusion_head_weight=0.75, fusion_head_gate=gate)).fit(clip,
                                                                                          np.ones((T, H, W), bool))
    if trains:
        with pytest.raises(Trained):
            tr.track(Q)
    else:
        np.testing.assert_array_equal(tr.track(Q).tracks, _flow(clip, Q).tracks)
        assert tr.gate is not None and not tr.gate.train


@pytest.mark.parametrize("drift_frames, trains", [(1, True), (4, True), (5, False)])
def test_a_query_carried_off_the_foreground_trains(tmp_path, no_training, drift_frames, trains):
    """A fixed foreground box while the scene slides left 3 px per frame: the first query (x 33 in frame 0,
    box from x 30) leaves the box in frame 2 and stays off it for 4 frames; the second starts off it."""
    clip = translating_clip(H, W, T, DX, DY)
    masks = np.zeros((T, H, W), bool)
    masks[:, 20:44, 30:60] = True
    q = np.array([[0, 33.0, 30.0], [0, 80.0, 30.0]])
    tr = _dino_flow(_cfg(tmp_path, "w", fusion_drift_frames=drift_frames)).fit(clip, masks)
    if trains:
        with pytest.raises(Trained):
            tr.track(q)
    else:
        tr.track(q)
    assert tr.gate.left_fg.tolist() == [trains, False] and not tr.gate.broke.any()


def test_broken_flow_trains_and_gives_what_training_first_gives(tmp_path, one_torch_thread, trainer_runs):
    clip = _broken_clip()
    auto = _dino_flow(_cfg(tmp_path, "auto")).fit(clip)
    assert trainer_runs == []  # fit alone does not train
    res = auto.track(Q)
    assert len(trainer_runs) == 1 and auto.gate.broke.any() and auto.fusion_stats.gate["trained"]
    always = _dino_flow(_cfg(tmp_path, "always", "always")).fit(clip)
    assert len(trainer_runs) == 2  # 'always' trains in fit(), as before the gate
    ref = always.track(Q)
    for field in ("tracks", "visible", "confidence"):
        np.testing.assert_array_equal(getattr(res, field), getattr(ref, field))
    # the pure head of the same fit comes without another training
    auto.track_head(Q)
    assert len(trainer_runs) == 2


def test_never_does_not_train_and_hides_points_after_flow_broke(tmp_path, no_training):
    clip = _broken_clip()
    tr = _dino_flow(_cfg(tmp_path, "w", "never")).fit(clip)
    res = tr.track(Q)
    flow = _flow(clip, Q)  # the baseline: its own per-frame forward-backward and in-frame check
    assert ((flow.tracks >= 0) & (flow.tracks <= [W - 1, H - 1])).all()  # nothing clamped on this clip
    np.testing.assert_array_equal(res.tracks, flow.tracks)
    expected = np.zeros((len(Q), T), bool)  # visible while every check from the query frame on passed
    for i, tq in enumerate(Q[:, 0].astype(int)):
        expected[i, tq] = True
        for t in range(tq + 1, T):
            expected[i, t] = expected[i, t - 1] and flow.visible[i, t]
        for t in range(tq - 1, -1, -1):
            expected[i, t] = expected[i, t + 1] and flow.visible[i, t]
    np.testing.assert_array_equal(res.visible, expected)
    assert not res.visible.all() and (res.confidence[~res.visible] == 0).all()
    assert tr.fusion_stats.gate["need_head"] > 0 and not tr.fusion_stats.gate["trained"]


def test_fusion_train_is_not_in_the_training_key():
    keys = {training_key(preset("fast", fusion_train=m)) for m in ("auto", "always", "never")}
    assert keys == {"39014f0eba7beb22"}  # the fast preset's key at main 542fcfb, before the field: fits stay valid
    assert training_key(preset("fast", iterations=301)) != "39014f0eba7beb22"  # the key does see training
    with pytest.raises(UserError, match="fusion_train"):
        preset("fast", fusion_train="sometimes")


def test_cli_default_run_on_a_clip_whose_flow_holds_does_not_train(tmp_path, capsys, no_training):
    video = write_video(tmp_path / "clip.mp4", translating_clip(H, W, T, DX, DY), fps=10)
    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps({"points": [{"frame": 0, "x": 40, "y": 30}, {"frame": 5, "x": 20.5, "y": 40}]}))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        track_command.main(["--video", str(video), "--points", str(pts), "--out", str(out), "--no-overlay",
                            "--work-dir", str(tmp_path / "work"), "--stride", "4"])
    assert exc.value.code == 0, capsys.readouterr().err
    info = json.loads((out / "run_info.json").read_text())
    assert info["fusion"]["gate"]["trained"] is False and info["fusion"]["gate"]["need_head"] == 0
    assert "no training needed" in (out / "track.log").read_text()


# -- the pre-pass and the reasoning behind it --------------------------------------------------------------
def _const(dx, dy, h=20, w=30):
    f = np.zeros((h, w, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def test_off_foreground_runs_by_hand():
    """Foreground: x < 10 in every frame. Runs are counted walking away from the query frame, each way."""
    def fg(t, xy):
        return np.asarray(xy)[:, 0] < 10
    xs = np.array([[5, 12, 13, 5, 12, 5],     # query t=0, on: off in 1-2 (run 2), then 4 (run 1)
                   [12, 12, 12, 5, 12, 12],   # query t=3, on: off 4-5 forwards (2), 2-0 backwards (3)
                   [15, 15, 15, 15, 15, 15]], float)  # query t=0 off the foreground: cannot drift
    tracks = np.stack([xs, np.zeros_like(xs)], -1)
    q = np.array([[0, 5, 0], [3, 5, 0], [0, 15, 0]], float)
    assert off_foreground_runs(tracks, q, fg).tolist() == [2, 3, 0]
    assert off_foreground_runs(tracks, q, None).tolist() == [0, 0, 0]


def test_reuse_flows_computes_each_pair_once():
    calls = []
    zero = _const(0, 0)

    def pair(t):
        calls.append(t)
        return zero, zero
    q = np.array([[1, 5.0, 5.0], [4, 8.0, 8.0]])
    fuse_tracks(blind_head(q, 6), reuse_flows(pair, q[:, 0]), 6, 0.0, 1.5, None)
    assert sorted(calls) == [0, 1, 2, 3, 4]  # fuse_tracks alone reads 1-4 forwards, then 3-0 backwards
    calls.clear()
    fuse_tracks(blind_head(q, 6), pair, 6, 0.0, 1.5, None)
    assert sorted(calls) == [0, 1, 1, 2, 2, 3, 3, 4]


def test_where_flow_holds_no_head_changes_positions_or_visibility():
    """The claim the gate rests on, checked with the fusion's own code: flow consistent in every step and
    points kept on the foreground -> any head (random positions, visibility, confidence; every candidate
    accepted) leaves positions and visibility as the blind pre-pass has them; only confidence can rise."""
    rng = np.random.default_rng(0)
    n, t = 8, 6
    fwd, bwd = _const(2, 1), _const(-2, -1)
    q = np.stack([rng.integers(0, t, n), rng.uniform(10, 15, n), rng.uniform(5, 10, n)], 1).astype(np.float32)

    def fg(_, xy):
        return np.ones(len(xy), bool)
    blind = fuse_tracks(blind_head(q, t), lambda _: (fwd, bwd), t, 3.0, 1.5, None, 0.5, 1, fg)
    assert not decide("auto", blind[1], blind[0], q, fg, 1).need.any()
    moved_any = False
    for seed in range(5):
        r = np.random.default_rng(seed)
        head = TrackResult(r.uniform(0, 30, (n, t, 2)), r.random((n, t)) < 0.7, r.random((n, t)), q)
        tracks, vis, conf = fuse_tracks(head, lambda _: (fwd, bwd), t, 3.0, 1.5, None, 0.5, 1, fg)
        np.testing.assert_array_equal(tracks, blind[0])
        np.testing.assert_array_equal(vis, blind[1])
        assert (conf >= blind[2]).all()
        # a head weight with its default gate moves only points whose flow failed: none here
        weighted = fuse_tracks(head, lambda _: (fwd, bwd), t, 3.0, 1.5, None, 0.5, 1, fg, head_weight=0.75)
        np.testing.assert_array_equal(weighted[0], blind[0])
        # moving every agreeing point (gate "always") does change them: why the tracker then trains
        always = fuse_tracks(head, lambda _: (fwd, bwd), t, 3.0, 1.5, None, 0.5, 1, fg, head_weight=0.75,
                             head_gate="always")
        moved_any |= not np.array_equal(always[0], blind[0])
    assert moved_any


def test_what_the_gate_flags_a_head_can_change():
    """The converse: a query flagged for a broken step, or for leaving the foreground, gets another answer
    from some head (one that sees the point far from flow; every candidate accepted)."""
    fwd, bad_bwd = _const(2, 0), _const(0, 0)  # the backward flow does not undo the forward one: fb error 2 px
    q = np.array([[0, 10.0, 10.0]], np.float32)
    head = TrackResult(np.full((1, 4, 2), 20.0), np.ones((1, 4), bool), np.ones((1, 4)), q)
    blind = fuse_tracks(blind_head(q, 4), lambda _: (fwd, bad_bwd), 4, 3.0, 1.5, None)
    assert decide("auto", blind[1], blind[0], q, None, 1).broke.all()
    assert not np.array_equal(fuse_tracks(head, lambda _: (fwd, bad_bwd), 4, 3.0, 1.5, None)[0], blind[0])

    def fg(_, xy):  # foreground x < 13: flow (consistent, +2 px per frame) carries the query off it at frame 2
        return np.asarray(xy)[:, 0] < 13
    back = _const(-2, 0)
    blind = fuse_tracks(blind_head(q, 4), lambda _: (fwd, back), 4, 3.0, 1.5, None, 0.5, 1, fg)
    gate = decide("auto", blind[1], blind[0], q, fg, 1)
    assert gate.left_fg.all() and not gate.broke.any()
    head.tracks[:] = 5.0  # seen on the foreground, far from flow: a drift re-detection there
    assert not np.array_equal(fuse_tracks(head, lambda _: (fwd, back), 4, 3.0, 1.5, None, 0.5, 1, fg)[0], blind[0])


def test_time_left_counts_a_training_that_begins_after_tracking_began():
    """The track command begins its 'track' stage before track(), which counts the stages not begun as skipped;
    dino-flow's gate may then train inside track(): the estimate must count that training again."""
    clock = [0.0]
    run = RunETA({"masks": (10, 1.0), "train": (100, 1.0), "track": (1, 1.0)}, clock=lambda: clock[0],
                 prior_weight_s=0)
    run.begin("masks")
    run.finish("masks", 10.0)
    run.begin("track")
    assert run.stage_left("train") == 0.0  # skipped, as far as anyone knew
    run.begin("train")
    assert run.stage_left("train") == pytest.approx(100.0)
