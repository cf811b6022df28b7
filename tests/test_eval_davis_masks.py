"""The DAVIS mask-consistency benchmark: hand-computed in-mask / visible / jump cases, the query sampler
(inside the eroded mask, seeded), the fixed hold-out split, the flow cache on a few real frames, and the
CLI path on tiny clips the test writes itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badja_eval import davis_masks as dm


# ------------------------------------------------------------------------------------------- metrics
def _rect_masks():
    """T=4 masks 20x30: frames 0, 1, 3 hold the rectangle x 10..19, y 5..14; frame 2 is empty."""
    m = np.zeros((4, 20, 30), bool)
    for t in (0, 1, 3):
        m[t, 5:15, 10:20] = True
    return m


def test_in_mask_visible_hand_computed():
    masks = _rect_masks()
    tracks = np.zeros((2, 4, 2))
    tracks[0] = [12, 8]  # always inside
    tracks[1] = [[12, 8], [25, 8], [0, 0], [15, 10]]  # outside at t=1 (visible), inside at t=3 (hidden)
    vis = np.ones((2, 4), bool)
    vis[1, 3] = False
    vis[:, 2] = False  # frame 2 has no mask: never scored whatever the tracker says
    s = dm.mask_scores(tracks, vis, masks, dilate_px=0)
    # scored point-frames: t in {1, 3} (t=0 is the query, t=2 has an empty mask) x 2 points = 4
    assert s["count"] == 4
    assert s["visible"] == pytest.approx(75.0)  # 3 of 4 predicted visible
    assert s["in_mask"] == pytest.approx(100 * 2 / 3)  # of the 3 visible: p0 t1, p0 t3 in; p1 t1 out
    assert s["in_mask_all"] == pytest.approx(75.0)  # p0 t1, p0 t3, p1 t3 in; p1 t1 out


def test_dilation_and_rounding_at_the_mask_edge():
    masks = _rect_masks()

    def share(x, dil):
        tracks = np.tile(np.array([x, 10.0]), (1, 4, 1))
        return dm.mask_scores(tracks, np.ones((1, 4), bool), masks, dilate_px=dil)["in_mask"]

    assert share(19.4, 0) == 100.0  # rounds to column 19, the last mask column
    assert share(19.6, 0) == 0.0  # rounds to column 20
    assert share(21.0, 2) == 100.0  # 2 px right of the edge: inside a 2-px dilation ...
    assert share(21.0, 1) == 0.0  # ... not a 1-px one
    assert share(-3.0, 50) == 0.0  # outside the image never counts as inside


def test_nothing_visible_gives_nan_not_a_perfect_score():
    masks = _rect_masks()
    s = dm.mask_scores(np.full((1, 4, 2), 12.0), np.zeros((1, 4), bool), masks, dilate_px=0)
    assert np.isnan(s["in_mask"]) and s["visible"] == 0.0 and s["in_mask_all"] == 100.0


def _const_flows(T=3, H=40, W=100, dx=5.0):
    fwd = np.zeros((T - 1, H, W, 2), np.float32)
    fwd[..., 0] = dx
    return fwd, -fwd.copy()


def test_jump_against_a_known_flow():
    fwd, bwd = _const_flows()  # everything moves +5 px in x per frame
    xs = np.array([[10, 15, 20],  # follows the flow: |5 - 5| = 0
                   [10, 50, 55],  # step 0 moves 40: |40 - 5| = 35 > 30 -> jump; step 1 follows
                   [10, 44, 49],  # step 0 moves 34: |34 - 5| = 29 <= 30 -> no jump
                   [10, 90, 20]], float)  # jumps, but hidden at frame 1: neither step counts
    tracks = np.stack([xs, np.full_like(xs, 20.0)], axis=-1)
    vis = np.ones((4, 3), bool)
    vis[3, 1] = False
    s = dm.jump_scores(tracks, vis, fwd, bwd, jump_px=30.0, flow_fb_px=5.0)
    assert s["steps"] == 6  # 3 points x 2 steps
    assert s["jump"] == pytest.approx(100 / 6)


def test_jump_ignores_steps_where_flow_is_not_fwd_bwd_consistent():
    fwd, bwd = _const_flows()
    bwd[0, :, 60:] = [10.0, 0.0]  # x in 10..14 lands at 15..19 -> consistent; near x=65 it is not
    tracks = np.stack([np.array([[10, 15, 20], [50, 90, 95]], float), np.full((2, 3), 20.0)], axis=-1)
    # point 1 at x=50 lands at 55 (bwd there -5 -> back to 50: consistent) and then jumps by 35
    s = dm.jump_scores(tracks, np.ones((2, 3), bool), fwd, bwd, jump_px=30.0, flow_fb_px=5.0)
    assert s["steps"] == 4 and s["jump"] == pytest.approx(25.0)
    tracks[1, 0, 0] = 57.0  # lands at 62: bwd +10 -> 72, error 15 px -> step 0 of point 1 not counted
    s = dm.jump_scores(tracks, np.ones((2, 3), bool), fwd, bwd, jump_px=30.0, flow_fb_px=5.0)
    assert s["steps"] == 3 and s["jump"] == 0.0


# ------------------------------------------------------------------------------------------- queries
def _disc(h=64, w=80, cx=40, cy=30, r=20):
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_queries_lie_inside_the_eroded_mask_and_are_seeded():
    mask = _disc()
    q = dm.sample_queries(mask, 30, 6.0, dm.clip_rng(0, "goat"))
    assert q.shape == (30, 3) and (q[:, 0] == 0).all()
    d = np.hypot(q[:, 1] - 40, q[:, 2] - 30)
    assert d.max() <= 20 - 6 + 1.0  # at least ~6 px inside the disc's edge
    assert len({tuple(p) for p in q[:, 1:]}) == 30  # without replacement
    assert np.array_equal(q, dm.sample_queries(mask, 30, 6.0, dm.clip_rng(0, "goat")))
    assert not np.array_equal(q, dm.sample_queries(mask, 30, 6.0, dm.clip_rng(1, "goat")))
    assert not np.array_equal(q, dm.sample_queries(mask, 30, 6.0, dm.clip_rng(0, "libby")))


def test_thin_mask_falls_back_to_less_erosion_but_stays_on_it():
    mask = np.zeros((40, 60), bool)
    mask[20:23, 5:55] = True  # 3 px thick: a 10-px erosion empties it
    q = dm.sample_queries(mask, 8, 10.0, dm.clip_rng(0, "kite-surf"))
    assert mask[q[:, 2].astype(int), q[:, 1].astype(int)].all()


def test_empty_first_mask_is_a_user_error():
    from cosettle.errors import UserError

    with pytest.raises(UserError):
        dm.sample_queries(np.zeros((10, 10), bool), 3, 2.0, dm.clip_rng(0, "x"))


def test_split_is_fixed_and_partitions_the_clips():
    assert len(dm.CLIPS) == 16 and len(dm.HELD_OUT) == 4 and set(dm.HELD_OUT) <= set(dm.CLIPS)
    tune, held = dm.select_clips(list(dm.CLIPS), "tune"), dm.select_clips(list(dm.CLIPS), "heldout")
    assert len(tune) == 12 and set(tune).isdisjoint(held) and set(tune) | set(held) == set(dm.CLIPS)
    assert "horsejump-high" not in dm.CLIPS


def test_thresholds_scale_with_the_long_side():
    c = dm.MaskBenchConfig().scaled((240, 427))
    assert c.dilate_px == pytest.approx(7.5) and c.jump_px == pytest.approx(15.0)
    assert dm.MaskBenchConfig().scaled((480, 854)).erode_px == pytest.approx(10.0)


# ------------------------------------------------------------------------------------------- real frames
def test_flow_cache_and_jump_on_real_frames(shared_dir, tmp_path):
    clip = dm.load_clip(shared_dir / "data", "blackswan", max_frames=3)
    assert clip.num_frames == 3 and clip.size_hw == (480, 854)
    masks = clip.load_masks()
    q = dm.sample_queries(masks[0], 10, 10.0, dm.clip_rng(0, clip.name))
    assert masks[0][q[:, 2].astype(int), q[:, 1].astype(int)].all()
    fwd, bwd = dm.cached_flows(tmp_path, clip)
    assert fwd.shape == (2, 480, 854, 2) and fwd.dtype == np.float16
    files = list(tmp_path.glob("blackswan-*.npz"))
    assert len(files) == 1
    fwd2, _ = dm.cached_flows(tmp_path, clip)  # read back from the cache
    assert np.array_equal(fwd, fwd2)
    # a track that follows the flow exactly never jumps; one 100 px jump is one jumped step
    tr = np.zeros((10, 3, 2))
    tr[:, 0] = q[:, 1:]
    from tracker.preprocess.flow import sample_flow

    for t in range(2):
        tr[:, t + 1] = tr[:, t] + sample_flow(fwd[t].astype(np.float32), tr[:, t].astype(np.float32))
    vis = np.ones((10, 3), bool)
    s = dm.jump_scores(tr, vis, fwd, bwd, 30.0, 5.0)
    assert s["jump"] == 0.0 and s["steps"] > 0
    n1 = dm.jump_scores(tr[:, 1:], vis[:, 1:], fwd[1:], bwd[1:], 30.0, 5.0)["steps"]  # steps 1 -> 2 counted
    assert n1 > 0
    tr[:, 2] += [100.0, 0.0]  # every point jumps 100 px at the last step
    s2 = dm.jump_scores(tr, vis, fwd, bwd, 30.0, 5.0)
    assert s2["steps"] == s["steps"] and s2["jump"] == pytest.approx(100.0 * n1 / s["steps"])


# ------------------------------------------------------------------------------------------- CLI
def _write_clip(root: Path, name: str, T=5, H=48, W=64, speed=2):
    """A textured square 20 px wide moving right ``speed`` px/frame on a static textured background."""
    rng = np.random.default_rng(len(name))
    bg = (rng.random((H, W, 3)) * 120).astype(np.uint8)
    tex = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    for sub in ("JPEGImages", "Annotations"):
        (root / "davis480" / name / sub).mkdir(parents=True)
    for t in range(T):
        img, m = bg.copy(), np.zeros((H, W), np.uint8)
        x0 = 10 + speed * t
        img[14:34, x0:x0 + 20] = tex
        m[14:34, x0:x0 + 20] = 255
        Image.fromarray(img).save(root / "davis480" / name / "JPEGImages" / f"{t:05d}.jpg", quality=95)
        Image.fromarray(m).save(root / "davis480" / name / "Annotations" / f"{t:05d}.png")


@pytest.fixture
def mask_root(tmp_path):
    root = tmp_path / "data"
    _write_clip(root, "blackswan")  # a tune clip
    _write_clip(root, "goat", speed=3)  # a held-out clip
    return root


def _main(argv, capsys):
    from badja_eval.run import main

    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code, capsys.readouterr()


def test_cli_runs_scores_splits_and_resumes(mask_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--benchmark", "davis-masks", "--data-root", mask_root, "--trackers", "static,flow",
            "--num-points", "6", "--out", out, "--quiet"]
    code, cap = _main(args, capsys)
    assert code == 0, cap.err
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"] == ["in_mask", "in_mask_all", "visible", "jump"]
    rows = {(r["sequence"], r["tracker"]): r for r in res["rows"]}
    assert {s for s, _ in rows} == {"blackswan", "goat", "mean", "mean[tune]", "mean[heldout]"}
    assert rows[("mean[heldout]", "static")]["in_mask"] == rows[("goat", "static")]["in_mask"]
    # 6 points x 4 scored frames per clip; static shows every point
    assert rows[("blackswan", "static")]["count"] == 24 and rows[("goat", "static")]["visible"] == 100.0
    # the flow baseline chains the same DIS flows the jump metric uses: it never jumps against them
    assert rows[("goat", "flow")]["jump"] == 0.0 and rows[("blackswan", "flow")]["jump"] == 0.0
    assert list((out / "flow").glob("goat-*.npz"))
    # the square moves 8-12 px, far beyond the 1-px dilation at 64 px: points that stay put leave it
    assert rows[("goat", "static")]["in_mask_all"] < 100.0
    assert "DAVIS masks" in res["protocol"] and "eroded 10 px" in res["protocol"]
    # a re-run loads every result from the cache
    code, cap = _main(args, capsys)
    assert code == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["newly_computed"] == 0
    # --split heldout scores goat only; --flow-cache shares the first run's flows
    code, cap = _main(args + ["--split", "heldout", "--out", tmp_path / "held", "--flow-cache", out / "flow"],
                      capsys)
    assert code == 0 and not (tmp_path / "held" / "flow").exists()
    seqs = {r["sequence"] for r in json.loads((tmp_path / "held" / "results.json").read_text())["rows"]}
    assert seqs == {"goat", "mean"}


@pytest.mark.parametrize("extra,needle", [
    (["--split", "validation"], "invalid choice"),
    (["--max-frames", "1"], "--max-frames must be >= 2"),
    (["--num-points", "0"], "--num-points must be >= 1"),
    (["--sequences", "nosuchclip"], "not under"),
    (["--query-mode", "first"], "does not apply"),
])
def test_cli_bad_input_is_one_line_exit_2(mask_root, tmp_path, capsys, extra, needle):
    out = tmp_path / "bad"
    code, cap = _main(["--benchmark", "davis-masks", "--data-root", mask_root, "--out", out, *extra], capsys)
    assert code == 2
    lines = [ln for ln in cap.err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in cap.err and not out.exists()


def test_a_cut_clip_reuses_the_whole_clips_flows(tmp_path):
    root = tmp_path / "data"
    _write_clip(root, "libby", T=5)
    whole = dm.load_clip(root, "libby")
    fwd, bwd = dm.cached_flows(tmp_path / "flow", whole)
    cut = dm.load_clip(root, "libby", max_frames=3)
    assert cut.uncut().num_frames == 5 and whole.uncut() is whole
    f3, b3 = dm.cached_flows(tmp_path / "flow", cut)
    assert np.array_equal(f3, fwd[:2]) and np.array_equal(b3, bwd[:2])
    assert len(list((tmp_path / "flow").glob("*.npz"))) == 1  # nothing new written
    # computed directly, the cut clip's flows are the same pairs
    f3_own, _ = dm.cached_flows(tmp_path / "own", cut)
    assert np.array_equal(f3_own, f3)
