"""Faults through the CLIs (issue 10): bad outputs, bad flags and failing writers give one ``error:``
line, exit status 2 and nothing written; odd but valid inputs (1-bit PNGs, a CSV with a byte-order
mark) just work; a killed run leaves no partial output set."""
from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import cosettle.commands.extract_features as extract_command
import tracker.commands.track as track_command
import torch

from cosettle.io.video import write_video
from tests._subproc import kill_when_announced
from tests._tracker_synth import translating_clip

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the module look themselves up there
    spec.loader.exec_module(mod)
    return mod


TRACK = track_command
EXTRACT = extract_command


def run(cli, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def assert_one_line_error(code, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def no_partials(folder: Path) -> bool:
    return not any(".partial-" in p.name for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    video = write_video(d / "clip.mp4", translating_clip(32, 48, 4, 2, 1), fps=10)
    pts = d / "pts.json"
    pts.write_text(json.dumps({"points": [{"frame": 0, "x": 10, "y": 12}, {"frame": 3, "x": 30.5, "y": 20}]}))
    return video, pts


def _static(video, pts, out, *extra):
    return ["--video", str(video), "--points", str(pts), "--tracker", "static", "--out", str(out), *extra]


# -- output paths are validated before any work ------------------------------------------------------
def test_out_is_an_existing_file(clip, tmp_path, capsys):
    video, pts = clip
    f = tmp_path / "taken"
    f.write_text("mine")
    work = tmp_path / "work"
    code, _, err = run(TRACK, ["--video", str(video), "--points", str(pts), "--tracker", "dino", "--out", str(f),
                               "--work-dir", str(work)], capsys)
    assert_one_line_error(code, err, "is an existing file")
    assert f.read_text() == "mine" and not work.exists()  # checked before preprocessing/training
    assert no_partials(tmp_path)


def test_out_under_a_file(clip, tmp_path, capsys):
    video, pts = clip
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run(TRACK, _static(video, pts, f / "sub" / "out"), capsys)
    assert_one_line_error(code, err, "which is a file")
    assert no_partials(tmp_path)


NOBODY = 65534  # the conventional unprivileged uid/gid


def _run_as_nobody(cli, argv) -> tuple[int, str]:
    """``cli.main(argv)`` in a forked child that dropped root to uid/gid 65534 -> (exit code, stderr).

    Root passes every permission check, so for root a folder it may not write is made by asking as a user
    who may not. The fork shares the parent's imports, so the child reads no file of the repository or the
    environment; it reports back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        res = {"code": None, "err": ""}
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            res["uid"] = os.geteuid()
            buf, old = io.StringIO(), sys.stderr
            sys.stderr = buf
            try:
                cli.main(argv)
            except SystemExit as exc:
                res["code"] = exc.code
            finally:
                sys.stderr = old
            res["err"] = buf.getvalue()
        except BaseException as exc:  # noqa: BLE001 -- report anything to the parent
            res["err"] += f"child failed: {exc!r}"
        finally:
            os.write(w, json.dumps(res).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        res = json.loads(f.read().decode() or "{}")
    os.waitpid(pid, 0)
    assert res.get("uid") == NOBODY, res
    return res["code"], res["err"]


def test_out_in_an_unwritable_folder(clip, capsys):
    """A folder without write permission, as the user the run is: run directly when not root, and as
    root (CI) through a child that dropped to uid 65534 (root itself may write anywhere)."""
    video, pts = clip
    with tempfile.TemporaryDirectory() as base:
        os.chmod(base, 0o755)  # traversable by the unprivileged child (its parents are /tmp-like)
        ro = Path(base) / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            argv = _static(video, pts, ro / "out")
            if os.geteuid() == 0:
                code, err = _run_as_nobody(TRACK, argv)
            else:
                code, _, err = run(TRACK, argv, capsys)
        finally:
            ro.chmod(0o755)
        assert_one_line_error(code, err, "cannot write", str(ro))
        assert list(ro.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (unwritable even for root)")
def test_out_where_even_root_cannot_write(clip, capsys):
    video, pts = clip
    code, _, err = run(TRACK, _static(video, pts, "/proc/self/cosettle_out"), capsys)
    assert_one_line_error(code, err)


def test_extract_features_and_eval_check_out_first(clip, tmp_path, capsys):
    video, _ = clip
    f = tmp_path / "taken"
    f.write_text("x")
    cache = tmp_path / "cache"
    code, _, err = run(EXTRACT, ["--video", str(video), "--out", str(f), "--cache-dir", str(cache)], capsys)
    assert_one_line_error(code, err, "is an existing file")
    assert not cache.exists()
    proc = subprocess.run([sys.executable, str(REPO / "badja_eval" / "run.py"), "--benchmark", "synthetic",
                           "--trackers", "static", "--num-videos", "1", "--num-frames", "3", "--out", str(f)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "is an existing file")
    assert f.read_text() == "x"


# -- the output set appears complete or not at all ---------------------------------------------------
def test_files_get_the_umask_mode_not_0600(clip, tmp_path, capsys):
    video, pts = clip
    old = os.umask(0o022)
    try:
        code, _, err = run(TRACK, _static(video, pts, tmp_path / "out"), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "out").iterdir()]
    assert {p.name for p in files} >= {"tracks.npz", "tracks.json", "tracks.csv", "overlay.mp4", "config.yaml",
                                       "run_info.json", "track.log"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, (p.name, oct(p.stat().st_mode))
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert no_partials(tmp_path)


def _fail_full_disk(tmp, frames, fps):
    Path(tmp).write_bytes(b"\x00" * 10)
    raise OSError(errno.ENOSPC, "No space left on device")


def _short_video(tmp, frames, fps):  # what a full disk or a killed ffmpeg leaves: a truncated file
    frames = list(frames)
    import imageio.v2 as iio2

    w = iio2.get_writer(str(tmp), format="ffmpeg", fps=fps, codec="libx264", macro_block_size=1)
    for f in frames:
        w.append_data(np.asarray(f))
    w.close()
    Path(tmp).write_bytes(Path(tmp).read_bytes()[:300])
    return len(frames)


@pytest.mark.parametrize("writer,needle", [(_fail_full_disk, "no space left"),
                                           (_short_video, "0 of 4 frames"),
                                           ("ffmpeg exits 1", "ffmpeg exited with status 1")])
def test_a_failing_overlay_leaves_no_partial_set(clip, tmp_path, capsys, monkeypatch, writer, needle):
    import imageio_ffmpeg

    import cosettle.io.video as V

    video, pts = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "tracks.csv").write_text("old result\n")  # a previous run's file stays as it was
    if callable(writer):
        monkeypatch.setattr(V, "_write_mp4", writer)
    else:  # a real ffmpeg process that fails: the writer must read its exit status
        fake = tmp_path / "fake_ffmpeg"
        fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'av_interleaved_write_frame(): No space left on device' >&2\n"
                        "exit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    code, _, err = run(TRACK, _static(video, pts, out), capsys)
    assert_one_line_error(code, err, needle)
    assert sorted(p.name for p in out.iterdir()) == ["tracks.csv"]
    assert (out / "tracks.csv").read_text() == "old result\n"
    assert no_partials(tmp_path)


_KILL_CHILD = """
import runpy, sys
import tracker.dino.train

step = tracker.dino.train.Trainer.step
def step_then_wait(self, it):
    if it == 1:  # inside training: the staging folder and the work folder exist, no output set yet
        print("in training", flush=True)
        sys.stdin.read()
        raise SystemExit("stdin closed before the SIGKILL")
    return step(self, it)
tracker.dino.train.Trainer.step = step_then_wait
sys.argv = [{track!r}] + {argv!r}
runpy.run_module("tracker.commands.track", run_name="__main__")  # = scripts/track.py
"""


def test_killed_run_leaves_no_output(clip, tmp_path, capsys):
    """SIGKILL during training (the child says when it is there and blocks: no polling), then a re-run."""
    video, pts = clip
    out = tmp_path / "out"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", COSETTLE_OFFLINE="1")
    argv = ["--video", str(video), "--points", str(pts), "--tracker", "dino", "--iterations", "50", "--stride", "4",
            "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    child = _KILL_CHILD.format(track=str(REPO / "scripts" / "track.py"), argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    kill_when_announced(proc, "in training")  # the child prints it from inside training, then blocks
    assert not out.exists()  # only a hidden staging folder (never a half set under --out) ...
    assert len(list(tmp_path.glob(".out.partial-*"))) == 1
    code, _, err = run(TRACK, _static(video, pts, out, "--no-overlay"), capsys)
    assert code == 0, err
    assert no_partials(tmp_path)  # ... which the next run removes (its process is gone)


# -- flags and values -------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    (["--fps", "0"], "--fps"), (["--fps", "-5"], "--fps"), (["--fps", "nan"], "--fps"),
    (["--device", "tpu"], "--device"),
    (["--resolution", "0"], "positive"), (["--resolution", "100000"], "exceeds"),
    (["--resolution=-3x20"], "positive"),
    (["--stride", "-4"], "--stride"), (["--stride", "0"], "--stride"),
    (["--max-frames", "0"], "--max-frames"),
    (["--nosuch-flag"], "unrecognized arguments"),
    (["--tracker", "nosuch"], "--tracker"),
])
def test_bad_flag_values_are_one_line(clip, tmp_path, capsys, flags, needle):
    video, pts = clip
    out = tmp_path / "out"
    code, _, err = run(TRACK, _static(video, pts, out, *flags), capsys)
    assert_one_line_error(code, err, needle, "-- see --help")
    assert not out.exists() and no_partials(tmp_path)


def test_eval_device_checked(tmp_path, capsys):
    ev = _load("eval_cli_faults", "badja_eval/run.py")
    out = tmp_path / "ev"
    code, _, err = run(ev, ["--benchmark", "synthetic", "--trackers", "static", "--num-videos", "1",
                            "--num-frames", "3", "--device", "tpu", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "--device", "tpu")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_on_a_cpu_machine(clip, tmp_path, capsys):
    video, pts = clip
    code, _, err = run(TRACK, _static(video, pts, tmp_path / "out", "--device", "cuda"), capsys)
    assert_one_line_error(code, err, "no usable CUDA GPU")


def test_bad_inputs_one_line_nothing_written(clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSETTLE_OFFLINE", "1")
    video, pts = clip
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100000 + "]" * 100000)
    nested_cfg = tmp_path / "nested.yaml"
    nested_cfg.write_text("[" * 100000 + "]" * 100000)
    v = ["--video", str(video)]
    cases = {
        "absurd grid": (v + ["--grid-size", "100000", "--tracker", "static"], "--grid-size 100000"),
        "points is a folder": (v + ["--points", str(tmp_path), "--tracker", "static"], "is a folder"),
        "nested json": (v + ["--points", str(nested), "--tracker", "static"], "nested too deeply"),
        "nested config": (v + ["--points", str(pts), "--config", str(nested_cfg)], "nested too deeply"),
        "no such timm model": (v + ["--points", str(pts), "--tracker", "features", "--backend", "timm:nosuch_vit"],
                               "no such timm model"),
        "projector on dsift": (v + ["--points", str(pts), "--tracker", "features", "--projector",
                                    str(tmp_path / "p.safetensors")], "--projector"),
    }
    for name, (argv, needle) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, _, err = run(TRACK, argv + ["--out", str(out), "--work-dir", str(tmp_path / "w")], capsys)
        assert_one_line_error(code, err, needle)
        assert not out.exists() and not (tmp_path / "w").exists(), name
    assert no_partials(tmp_path)


# -- odd but valid inputs work -----------------------------------------------------------------------
def test_one_bit_png_frames_load(tmp_path, capsys):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.random((20, 24)) > 0.5).convert("1").save(frames / f"{i:05d}.png")
    from cosettle.io.video import read_video

    vid = read_video(frames)
    first = vid[0]
    assert first.shape == (20, 24, 3) and first.dtype == np.uint8 and set(np.unique(first)) <= {0, 255}
    code, _, err = run(TRACK, ["--video", str(frames), "--grid-size", "2", "--tracker", "static",
                               "--out", str(tmp_path / "out"), "--no-overlay"], capsys)
    assert code == 0, err


def test_csv_with_byte_order_mark(clip, tmp_path, capsys):
    video, _ = clip
    csv_file = tmp_path / "pts.csv"
    csv_file.write_bytes("frame,x,y,name\r\n0,10,12,nose\r\n".encode("utf-8-sig"))  # as Excel saves it
    code, _, err = run(TRACK, _static(video, csv_file, tmp_path / "out", "--no-overlay"), capsys)
    assert code == 0, err
    z = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert z["points"][0]["name"] == "nose" and z["points"][0]["query"] == {"frame": 0, "x": 10.0, "y": 12.0}


def test_weights_on_dsift_warns(clip, tmp_path, capsys):
    video, pts = clip
    code, _, err = run(TRACK, _static(video, pts, tmp_path / "out", "--no-overlay", "--tracker", "features",
                                      "--weights", "random", "--stride", "4"), capsys)
    assert code == 0, err
    assert "--weights is ignored" in err


def test_help_states_true_defaults(capsys):
    with pytest.raises(SystemExit):
        TRACK.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "fast 240 short side" in text and "dsift 8" in text
