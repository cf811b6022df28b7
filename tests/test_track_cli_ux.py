"""scripts/track.py as a new user meets it, through a real subprocess: the summary on stdout and the logs
on stderr (so ``track.py > run.txt`` captures the summary), --quiet, --json, normalised paths, true
demo log lines, overlay.png beside overlay.mp4; and a tiny DINO run whose summary reports the work
folder's size and whose time estimates end at zero."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "track.py"


def _run(*args, env=None):
    e = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=e, timeout=300)


def test_summary_on_stdout_logs_on_stderr(tmp_path):
    out = tmp_path / "sub" / ".." / "out"           # printed normalised, never as sub/../out
    p = _run("--tracker", "static", "--out", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("done in ") and "6 points x 24 frames (192x256 HxW)" in p.stdout
    assert "demo: mean error vs ground truth" in p.stdout
    assert " INFO " not in p.stdout and "done in" not in p.stderr and " INFO " in p.stderr
    final = tmp_path / "out"
    for name in ("tracks.npz", "overlay.mp4", "overlay.png", "track.log"):
        assert f"{final / name}\n" in p.stdout + "\n" and (final / name).is_file()
    assert "/../" not in p.stdout
    # the demo's log line names the file the next line reads (the staging copy) and where it is kept
    first, second = [ln for ln in p.stderr.splitlines() if " INFO " in ln][:2]
    read = re.search(r"video (\S+): 24 frames", second).group(1)
    assert f"read from {read}," in first and f"kept as {final / 'demo' / 'demo.mp4'}" in first
    assert (final / "demo" / "demo.mp4").is_file()


def test_quiet_and_json(tmp_path):
    p = _run("--tracker", "static", "--out", tmp_path / "o", "--quiet", "--json")
    assert p.returncode == 0 and p.stderr == ""
    s = json.loads(p.stdout)
    assert s["points"] == 6 and s["frames"] == 24 and 0.0 <= s["visible_share"] <= 1.0
    assert s["outputs"]["still"] == str(tmp_path / "o" / "overlay.png")
    assert s["total_s"] > 0 and "demo_mean_error_px" in s
    # an error stays one line on stderr, nothing on stdout
    bad = _run("--video", tmp_path / "missing.mp4", "--points", "x.json", "--out", tmp_path / "o2", "--quiet")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1


def test_dino_summary_reports_the_work_folder_and_the_estimate_ends_at_zero(tmp_path):
    env = {"COSETTLE_CACHE": str(tmp_path / "cache")}
    p = _run("--tracker", "dino", "--iterations", "3", "--out", tmp_path / "o", "--json", "--no-overlay", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(p.stdout)
    work = Path(s["work_dir"])
    assert work.parent == tmp_path / "cache" / "tracker" and s["work_dir_bytes"] > 10_000
    est = s["time_estimates"]
    assert len(est) >= 5 and est[-1]["left_s"] == 0.0                    # initial + every stage end
    assert "about" in p.stderr and "left" in p.stderr
    # the resumed (fully cached) run: every stage counts as done, so no estimate exceeds the first one
    p2 = _run("--tracker", "dino", "--iterations", "3", "--out", tmp_path / "o2", "--json", "--no-overlay", env=env)
    s2 = json.loads(p2.stdout)
    assert s2["work_dir"] == s["work_dir"] and s2["time_estimates"][-1]["left_s"] == 0.0
    info = _run("--cache-info", env=env)
    assert work.name in info.stdout and info.stdout.startswith(f"{tmp_path / 'cache' / 'tracker'}: 1 work folder(s)")
