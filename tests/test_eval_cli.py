"""badja_eval/run.py end to end: a 2-sequence BADJA run with the real static and flow trackers (resume
after an interruption, workers), the reference on the real files, and one-line errors on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "badja_eval" / "run.py"


def _run(*args, check=True):
    env = dict(os.environ, PYTHONPATH="")  # the script must work from a checkout by itself
    p = subprocess.run([sys.executable, str(RUN), *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=240)
    if check and p.returncode != 0:
        raise AssertionError(f"rc={p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _main(argv, capsys):
    from badja_eval.run import main

    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code, capsys.readouterr()


@pytest.fixture
def data_root(shared_dir, tmp_path):
    """Flat-layout horsejump-high cut to its first two annotated frames (clip 0..2, 854x480) plus a small
    static 'dog' sequence in the official DAVIS layout (160x90, palette masks, frames 3..6)."""
    root = tmp_path / "data"
    src = shared_dir / "data"
    ann = root / "badja" / "joint_annotations"
    ann.mkdir(parents=True)
    raw = json.loads((src / "badja/joint_annotations/horsejump-high.json").read_text())
    (ann / "horsejump-high.json").write_text(json.dumps(raw[:2]))
    for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        d = root / "davis480" / "horsejump-high" / sub
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i:05d}.{ext}").symlink_to(src / "davis480/horsejump-high" / sub / f"{i:05d}.{ext}")
    # dog: a static textured frame, a disc-shaped object 1 in a palette mask, joints inside the disc
    rng = np.random.default_rng(0)
    frame = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[0:90, 0:160]
    disc = ((xx - 80) ** 2 + (yy - 45) ** 2 < 30 ** 2).astype(np.uint8)
    fdir = root / "DAVIS/JPEGImages/480p/dog"
    mdir = root / "DAVIS/Annotations/480p/dog"
    fdir.mkdir(parents=True)
    mdir.mkdir(parents=True)
    entries = []
    for i in range(3, 7):
        Image.fromarray(frame).save(fdir / f"{i:05d}.jpg", quality=95)
        m = Image.fromarray(disc, mode="P")
        m.putpalette([0, 0, 0, 128, 0, 0] + [0] * 750)
        m.save(mdir / f"{i:05d}.png")
        if i in (3, 6):
            joints = [[0, 0]] * 37
            vis = [False] * 37
            for k, j in enumerate((8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36)):
                # [row, col] at 1920x1080, i.e. 12x the 160x90 frames; on a 5x4 grid inside the disc
                joints[j] = [(30 + 8 * (k // 5)) * 12, (60 + 10 * (k % 5)) * 12]
                vis[j] = True
            entries.append({"image_path": f"DAVIS/JPEGImages/Full-Resolution/dog/{i:05d}.jpg",
                            "segmentation_path": f"DAVIS/Annotations/Full-Resolution/dog/{i:05d}.png",
                            "joints": joints, "visibility": vis})
    (ann / "dog.json").write_text(json.dumps(entries))
    return root


def test_two_sequence_run_resume_and_workers(data_root, tmp_path, capsys):
    assert (REPO / "tracker" / "baselines.py").is_file(), "tracker/baselines.py (static, flow) is missing"
    out = tmp_path / "out"
    # interrupted after 2 of the 4 (sequence, tracker) results
    p = _run("--data-root", data_root, "--trackers", "static,flow", "--out", out, "--max-new", "2", "--quiet")
    assert "re-run the same command to continue" in p.stdout
    assert len(list((out / "cache").rglob("*.npz"))) == 2
    assert not (out / "results.csv").exists()
    code, cap = _main(["--data-root", data_root, "--trackers", "static,flow", "--out", out, "--quiet"], capsys)
    assert code == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["newly_computed"] == 2  # the first two came from the cache
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["sequence"], r["tracker"]): r for r in rows}
    assert set(got) == {(s, t) for s in ("dog", "horsejump-high", "mean") for t in ("static", "flow")}
    # dog is static: zero motion is exact, and so is optical flow on identical frames
    assert got[("dog", "static")]["delta_3px"] == 100.0 and got[("dog", "static")]["count"] == 20
    assert got[("dog", "flow")]["delta_3px"] == 100.0
    # horsejump-high frames 0..2: 17 of the 20 joints are visible at frame 2 (counted in the json); every
    # one moved 13-52 px since frame 0, so zero motion scores 0 at 3 px
    assert got[("horsejump-high", "static")]["count"] == 17
    assert got[("horsejump-high", "static")]["delta_3px"] == 0.0
    assert got[("mean", "static")]["delta_seg"] == pytest.approx(
        (got[("dog", "static")]["delta_seg"] + got[("horsejump-high", "static")]["delta_seg"]) / 2)
    for name in ("results.csv", "results.png", "config.yaml"):
        assert (out / name).stat().st_size > 0
    assert "δseg" in cap.out and "mean" in cap.out
    # two worker processes on a fresh output folder give the same numbers
    out2 = tmp_path / "out2"
    assert _main(["--data-root", data_root, "--trackers", "static", "--out", out2, "--workers", "2", "--quiet"],
                 capsys)[0] == 0
    rows2 = json.loads((out2 / "results.json").read_text())["rows"]
    assert {r["sequence"]: r["delta_seg"] for r in rows2} == {
        s: got[(s, "static")]["delta_seg"] for s in ("dog", "horsejump-high", "mean")}
    assert json.loads((out2 / "run_info.json").read_text())["newly_computed"] == 0  # workers did it


def test_reference_through_the_cli(shared_dir, tmp_path, capsys):
    code, cap = _main(["--data-root", shared_dir / "data", "--sequences", "horsejump-high", "--trackers",
                       "static", "--out", tmp_path, "--quiet"], capsys)
    assert code == 0
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert (round(row["delta_seg"], 2), row["delta_3px"], row["count"]) == (7.28, 0.0, 151)


@pytest.mark.parametrize("args,needle", [
    (["--trackers", "bogus"], "unknown tracker"),
    (["--data-root", "/nonexistent/x"], "data root not found"),
    (["--sequences", "cows"], "cows.json"),
    (["--shard", "3/2"], "bad --shard"),
    (["--query-mode", "strided"], "does not apply to badja"),
    (["--benchmark", "tapvid"], "needs --pickle"),
    (["--benchmark", "tapvid", "--pickle", "/nonexistent.pkl"], "pickle not found"),
    (["--trackers", "dino", "--backends", "nosuchbackend"], "unknown backend"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--benchmark", "synthetic", "--difficulty", "insane"], "unknown difficulty"),
    (["--trackers", "dino", "--tracker-args", "dino.nosuchfield=1"], "bad --tracker-args for dino"),
    (["--trackers", "flow", "--tracker-args", "flow.fb_thresh=2"], "bad --tracker-args for flow"),
    (["--tracker-args", "iterations=5"], "TRACKER.FIELD"),
    (["--trackers", "static", "--tracker-args", "static.x=1"], "takes no settings"),
    (["--backend-args", "weights"], "KEY=VALUE"),
])
def test_bad_input_is_one_line_exit_2(data_root, tmp_path, capsys, args, needle):
    argv = list(args)
    if "--data-root" not in argv:
        argv = ["--data-root", data_root, *argv]
    code, cap = _main(argv + ["--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], cap.err


def test_missing_frame_is_named(data_root, tmp_path, capsys):
    (data_root / "DAVIS/JPEGImages/480p/dog/00005.jpg").unlink()
    code, cap = _main(["--data-root", data_root, "--out", tmp_path, "--quiet"], capsys)
    assert code == 2 and "DAVIS/JPEGImages/480p/dog/00005.jpg" in cap.err


def test_script_bad_input_from_a_subprocess(tmp_path):
    p = _run("--data-root", tmp_path / "missing", check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "error:" in p.stderr


def test_tapvid_pickle_through_the_cli(tmp_path, capsys):
    """Static points, always visible: the static tracker is perfect in both query modes; a video list
    pickle with a point that moves 1 px/frame at 256 scores by hand."""
    import pickle

    T, H, W = 8, 32, 64
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    pts = np.tile(rng.uniform(0.1, 0.9, (3, 1, 2)), (1, T, 1)).astype(np.float32)
    moving = pts[:1].copy()
    moving[0, :, 0] += np.arange(T) / 256.0  # +1 raster px per frame at 256x256
    data = {"still": {"video": video, "points": pts, "occluded": np.zeros((3, T), bool)},
            "moving": {"video": video, "points": moving, "occluded": np.zeros((1, T), bool)}}
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(data))
    for mode in ("first", "strided"):
        out = tmp_path / mode
        code, cap = _main(["--benchmark", "tapvid", "--pickle", tmp_path / "t.pkl", "--trackers", "static",
                           "--query-mode", mode, "--out", out, "--quiet"], capsys)
        assert code == 0, cap.err
        rows = {r["sequence"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
        assert rows["still"]["average_jaccard"] == pytest.approx(100.0)
        assert rows["still"]["occlusion_accuracy"] == 100.0
        # first mode, query at 0: errors 1..7 px on frames 1..7; d < δ for δ=1,2,4,8,16 -> 0,1,3,7,7 of 7
        if mode == "first":
            expect = 100 * np.mean([0, 1 / 7, 3 / 7, 1, 1])
            assert rows["moving"]["average_pts_within_thresh"] == pytest.approx(expect)
        assert rows["mean"]["average_jaccard"] == pytest.approx(
            (rows["still"]["average_jaccard"] + rows["moving"]["average_jaccard"]) / 2)
    code, cap = _main(["--benchmark", "tapvid", "--pickle", tmp_path / "t.pkl", "--sequences", "nope",
                       "--out", tmp_path / "x", "--quiet"], capsys)
    assert code == 2 and "not in" in cap.err


def test_projected_backend_gain_columns(data_root, tmp_path, capsys):
    """A real projector file on dsift (random linear map) through the registry: one row per backend
    and gain columns = projected - base, per sequence and on the mean."""
    from cosettle.backends.registry import load_backend
    from cosettle.projector import Projector
    from cosettle.projector_io import save_projector

    dim = load_backend("dsift").feat_dim
    proj = save_projector(tmp_path / "p.safetensors", Projector(dim, 32, "linear", seed=0),
                          {"base_backend": "dsift"})
    out = tmp_path / "out"
    code, cap = _main(["--data-root", data_root, "--sequences", "dog", "--trackers", "features",
                       "--backends", f"dsift,dsift+cosettle:{proj}", "--out", out, "--quiet"], capsys)
    assert code == 0, cap.err
    rows = json.loads((out / "results.json").read_text())["rows"]
    by = {(r["sequence"], r["backend"]): r for r in rows}
    p, b = by[("mean", f"dsift+cosettle:{proj}")], by[("mean", "dsift")]
    assert p["gain_delta_seg"] == pytest.approx(p["delta_seg"] - b["delta_seg"])
    assert p["gain_delta_3px"] == pytest.approx(p["delta_3px"] - b["delta_3px"])
    assert "gain_delta_seg" not in b
    assert "Δδseg" in cap.out
    header = (out / "results.csv").read_text().splitlines()[0]
    assert "gain_delta_seg" in header and "gain_delta_3px" in header
