"""The davis-vos benchmark end to end on a hand-made DAVIS folder (two objects in a palette PNG, one clip with a
binary 0/255 mask), its files, resume, and the one-line errors. Scores are checked against J recomputed from the
written PNGs with a plain numpy IoU (not the module's code)."""
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badja_eval import davis_vos, vos_io
from badja_eval.run import main as run_main
from cosettle.io.masks import read_labels, read_mask

REPO = Path(__file__).resolve().parents[1]
H, W, T = 128, 192, 5


def _frames_and_labels(t):
    """A textured background; object 1 a bright square moving 2 px right per frame, object 2 a dark one still."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 7 + yy * 3) % 97 + 60, (xx * 5 + yy * 11) % 89 + 60, (xx * 13) % 83 + 60], -1)
    lab = np.zeros((H, W), np.uint8)
    x0 = 24 + 4 * t
    img[24:72, x0:x0 + 48] = (250, 240, 30)
    lab[24:72, x0:x0 + 48] = 1
    img[80:120, 120:168] = (10, 20, 160)
    lab[80:120, 120:168] = 2
    return img.astype(np.uint8), lab


def _make_root(tmp_path):
    root = tmp_path / "data"
    for name, palette in (("twoobj", True), ("binary", False)):
        d = root / "davis480" / name
        (d / "JPEGImages").mkdir(parents=True)
        (d / "Annotations").mkdir(parents=True)
        for t in range(T):
            img, lab = _frames_and_labels(t)
            Image.fromarray(img).save(d / "JPEGImages" / f"{t:05d}.jpg", quality=95)
            if palette:
                Image.open(_png(lab)).save(d / "Annotations" / f"{t:05d}.png")
            else:
                Image.fromarray(((lab == 1) * 255).astype(np.uint8)).save(d / "Annotations" / f"{t:05d}.png")
    return root


def _png(lab):
    return io.BytesIO(vos_io.indexed_png_bytes(lab))


def test_palette_is_the_davis_voc_colour_map():
    pal = vos_io.davis_palette()
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0] and pal[3].tolist() == [128, 128, 0]
    assert pal[4].tolist() == [0, 0, 128] and pal[8].tolist() == [64, 0, 0] and pal[255].tolist() == [224, 224, 192]


def test_read_labels_palette_and_binary(tmp_path):
    lab = np.zeros((6, 7), np.uint8)
    lab[1:3, 1:3] = 1
    lab[4, 4:6] = 2
    lab[0, 6] = 255
    p = tmp_path / "p.png"
    p.write_bytes(vos_io.indexed_png_bytes(lab))
    assert Image.open(p).mode == "P"
    assert (read_labels(p) == lab).all()
    assert (read_mask(p) == (lab != 0)).all()  # the same file through the one mask reader
    b = tmp_path / "b.png"
    Image.fromarray(((lab == 1) * 255).astype(np.uint8)).save(b)
    assert (read_labels(b) == (lab == 1)).all()


def _run(root, out, *extra):
    try:
        return run_main(["--benchmark", "davis-vos", "--data-root", str(root), "--sequences", "twoobj,binary",
                         "--out", str(out), "--quiet", "--feature-cache", str(out.parent / "fcache"), *extra])
    except SystemExit as stop:  # the CLI entry exits with the status
        return stop.code


def test_end_to_end_files_scores_and_resume(tmp_path, capsys):
    root = _make_root(tmp_path)
    out = tmp_path / "out"
    assert _run(root, out) == 0
    printed = capsys.readouterr().out
    assert "J&F" in printed and "mean" in printed
    mdir = out / "masks" / "dsift" / "twoobj"
    pngs = sorted(p.name for p in mdir.glob("*.png"))
    assert pngs == [f"{t:05d}.png" for t in range(T)]
    im = Image.open(mdir / "00003.png")
    assert im.mode == "P" and im.size == (W, H)
    assert im.getpalette()[3:6] == [128, 0, 0]
    # frame 0 is the given annotation
    assert (np.asarray(Image.open(mdir / "00000.png")) == _frames_and_labels(0)[1]).all()
    res = json.loads((out / "sequences" / "dsift" / "twoobj.json").read_text())
    assert set(res["objects"]) == {"twoobj_1", "twoobj_2"}
    # J recomputed from the PNGs with a plain IoU over frames 1..T-2
    for k in (1, 2):
        js = []
        for t in range(1, T - 1):
            pred = np.asarray(Image.open(mdir / f"{t:05d}.png")) == k
            gt = _frames_and_labels(t)[1] == k
            js.append((pred & gt).sum() / (pred | gt).sum())
        assert res["objects"][f"twoobj_{k}"]["J"]["mean"] == pytest.approx(np.mean(js))
        assert np.mean(js) > 0.6  # the objects are found (a broken propagation or geometry gives ~0)
    binary = json.loads((out / "sequences" / "dsift" / "binary.json").read_text())
    assert set(binary["objects"]) == {"binary_1"}
    assert (out / "contact" / "dsift" / "twoobj.png").is_file()
    assert (out / "sequences" / "dsift" / "twoobj.csv").read_text().startswith("object,frame,J,F")
    table = json.loads((out / "results.json").read_text())
    mean = [r for r in table["rows"] if r["sequence"] == "mean"][0]
    objs = [binary["objects"]["binary_1"], *res["objects"].values()]
    assert mean["j"] == pytest.approx(100 * np.mean([o["J"]["mean"] for o in objs]))  # over the 3 objects
    # resume: a second run recomputes nothing (the per-clip JSONs stay untouched)
    before = (out / "sequences" / "dsift" / "twoobj.json").stat().st_mtime_ns
    assert _run(root, out) == 0
    assert (out / "sequences" / "dsift" / "twoobj.json").stat().st_mtime_ns == before
    # changed settings: recomputed
    assert _run(root, out, "--topk", "3") == 0
    assert (out / "sequences" / "dsift" / "twoobj.json").stat().st_mtime_ns != before


def test_a_killed_clip_leaves_no_partial_masks(tmp_path, monkeypatch):
    root = _make_root(tmp_path)
    out = tmp_path / "out"
    calls = {"n": 0}
    real = davis_vos.frame_scores

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(davis_vos, "frame_scores", dying)
    assert _run(root, out) == 130  # Ctrl-C in the middle of the first clip (twoobj, frame 2)
    assert not (out / "masks" / "dsift" / "twoobj").exists()  # its masks were staged, never moved in
    assert not list((out / "masks" / "dsift").glob(".*partial*"))  # and the staging folder is gone
    assert not (out / "sequences" / "dsift" / "twoobj.json").exists()
    monkeypatch.setattr(davis_vos, "frame_scores", real)
    assert _run(root, out) == 0
    assert len(list((out / "masks" / "dsift" / "twoobj").glob("*.png"))) == T


@pytest.mark.parametrize("extra,needle", [(["--topk", "0"], "--topk"), (["--sequences", "nope"], "nope"),
                                          (["--max-frames", "2"], "--max-frames")])
def test_bad_input_one_line_exit_2(tmp_path, extra, needle):
    root = _make_root(tmp_path)
    cmd = [sys.executable, str(REPO / "badja_eval" / "run.py"), "--benchmark", "davis-vos", "--data-root", str(root),
           "--out", str(tmp_path / "o"), "--quiet", *(extra if "--sequences" in extra else ["--sequences", "binary", *extra])]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "o" / "results.csv").exists()


def test_vos_gain_chain_commands(tmp_path):
    """scripts/vos_gain.py: one command per backend = train on the 16 mask-only clips, then base vs +cosettle."""
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "vos_gain.py"), "--backend", "dsift", "--out",
                        str(tmp_path / "v"), "--backend-args", "resolution=240", "--dry-run"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    shared = REPO.parent / "shared" / "data" / "davis480"
    if not shared.is_dir():
        assert p.returncode == 2 and "training clips missing" in p.stderr
        return
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("$ ")]
    assert len(lines) == 2 and "train_projector.py" in lines[0] and "--benchmark davis-vos" in lines[1]
    assert f"dsift,dsift+cosettle:{tmp_path / 'v' / 'proj_dsift' / 'projector.safetensors'}" in lines[1]
    assert not (tmp_path / "v").exists()  # a dry run writes nothing
    from badja_eval.davis_masks import CLIPS as TRAIN_CLIPS
    assert len(TRAIN_CLIPS) == 16 and "cows" not in TRAIN_CLIPS and "horsejump-high" not in TRAIN_CLIPS


def _vos_gain(tmp_path, *args):
    """scripts/vos_gain.py --dry-run on a data root holding only the 16 training clips' (empty) frame folders."""
    from badja_eval.davis_masks import CLIPS as TRAIN_CLIPS
    root = tmp_path / "fake"
    for c in TRAIN_CLIPS:
        (root / "davis480" / c / "JPEGImages").mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "vos_gain.py"), "--data-root", str(root),
                           "--out", str(tmp_path / "v"), "--dry-run", *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_vos_gain_gives_the_stride_to_training_and_evaluation(tmp_path):
    """The documented DINOv2 command: base and projector on the stride-14 grid (the backend's default is 7)."""
    p = _vos_gain(tmp_path, "--backend", "dinov2_vits14_imgfocus", "--backend-args", "stride=14,resolution=476",
                  "--train-args", "--epochs 1 --warmup-epochs 0.25")
    assert p.returncode == 0, p.stderr
    train, vos = [shlex.split(ln[2:]) for ln in p.stdout.splitlines() if ln.startswith("$ ")]
    assert train[train.index("--stride") + 1] == "14" and train.count("--stride") == 1
    assert "--resolution" not in train and "resolution=476" not in " ".join(train)  # not a training flag
    assert "--epochs" in train and vos[vos.index("--backend-args") + 1] == "stride=14,resolution=476"
    assert not (tmp_path / "v").exists()
    # the same value in --train-args: given once; another value: refused before any work, one line
    p = _vos_gain(tmp_path, "--backend", "dsift", "--backend-args", "stride=8,weights=random,norm=false",
                  "--train-args=--stride 8")
    train = shlex.split(p.stdout.splitlines()[0][2:])
    assert p.returncode == 0 and train.count("--stride") == 1
    assert train[train.index("--weights") + 1] == "random" and train[train.index("--norm") + 1] == "false"
    p = _vos_gain(tmp_path, "--backend", "dinov2_vits14_imgfocus", "--backend-args", "stride=14",
                  "--train-args=--stride=7")
    assert p.returncode == 2 and "--stride 7" in p.stderr and "Traceback" not in p.stderr and not p.stdout
    # an existing projector: no training step, the evaluation still gets the stride
    proj = tmp_path / "P.safetensors"
    proj.write_bytes(b"")
    p = _vos_gain(tmp_path, "--backend", "dinov2_vits14_imgfocus", "--backend-args", "stride=14",
                  "--projector", str(proj))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("$ ")]
    assert p.returncode == 0 and len(lines) == 1 and "--backend-args stride=14" in lines[0]


def test_bench_vos_tiny(tmp_path):
    root = _make_root(tmp_path)
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_vos.py"), "--clip",
                        str(root / "davis480" / "twoobj"), "--random", "8"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["propagated_frames"] == T - 1 and out["channels"] == 8 and out["grid_hw"] == [15, 23]
    assert out["propagation_s"] > 0 and out["peak_rss_mb"] > 0
