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

import pytest

from cosettle.demo import make_demo_clip
from tracker.commands.track import DEMO_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "track.py"


def _run(*args, env=None):
    # the checkout under test first (an editable install elsewhere, e.g. a worktree's main, must not answer)
    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
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
    # the demo's log names where the clip is kept, and every path the log names exists after the run (it named
    # the staging copy, gone once the folder moved into place)
    first, second = [ln for ln in p.stderr.splitlines() if " INFO " in ln][:2]
    assert first.endswith(f"kept as {final / 'demo' / 'demo.mp4'}")
    assert re.search(r"video (\S+): 24 frames", second).group(1) == str(final / "demo" / "demo.mp4")
    named = set(re.findall(r"(/[^\s,;:()]+)", p.stderr))
    assert named and all(Path(x).exists() for x in named), [x for x in named if not Path(x).exists()]
    log_file = (final / "track.log").read_text()
    assert ".partial" not in log_file and "kept as" in log_file


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
    p = _run("--tracker", "dino", "--iterations", "20", "--out", tmp_path / "o", "--json", "--no-overlay", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(p.stdout)
    work = Path(s["work_dir"])
    assert work.parent == tmp_path / "cache" / "tracker" and s["work_dir_bytes"] > 10_000
    est = s["time_estimates"]
    assert len(est) >= 5 and est[-1]["left_s"] == 0.0                    # initial + every stage end
    assert "about" in p.stderr and "left" in p.stderr
    # stderr is a pipe, not a terminal: one line per stage with its time, no \r-joined bar frames
    assert "\r" not in p.stderr and re.search(r"^train: 20/20 it in \d+\.\d s", p.stderr, re.M), p.stderr[-1500:]
    # the fully cached re-run (with the overlay, as a user re-runs): its FIRST estimate already knows the cache.
    # It once opened with the fresh run's plan: 15.6 s for a 4.5-s re-run at 15 iterations (3.5x; "about 6 min"
    # for a 13-s re-run of a real clip); then, with the cache known, 1.46-1.60x (the tracking and writing priors
    # ignored the number of queries). Measured now: 0.97-1.12x over 6 re-runs (docs/tracking-cli.md)
    p2 = _run("--tracker", "dino", "--iterations", "20", "--out", tmp_path / "o2", "--json", env=env)
    s2 = json.loads(p2.stdout)
    assert s2["work_dir"] == s["work_dir"] and s2["time_estimates"][-1]["left_s"] == 0.0
    first = s2["time_estimates"][0]
    really_left = s2["total_s"] - first["at_s"]  # both on the run's one clock, to 0.01 s
    # within 1.5x (issue 28), plus 0.2 s: the re-run has under a second left, where the scheduler's slices on 2 shared
    # cores alone move it (0.72-0.83 s over 6 identical re-runs at load average 7; one stage 0.29-0.45 s)
    assert really_left / 1.5 - 0.2 <= first["left_s"] <= 1.5 * really_left + 0.2, (first, s2["total_s"],
                                                                                   s2["stages_s"])
    assert "stages cached, training resumes at iteration 20" in p2.stderr
    # the same cached fit with 144 queries (the demo clip as --video, the demo's settings): tracking and writing grow
    # with them, and so must the first estimate (it planned 1.2 s for any number: 0.36x of this run's ~3.3 s).
    # Checked as a ratio to the 6-query re-run on the same machine: the priors were measured on 2 shared cores at
    # load ~7, so on an idle machine both runs are faster than planned (CI, idle: 3.0 s planned for 1.6 s, 1.9x)
    demo_cfg = tmp_path / "demo.yaml"
    demo_cfg.write_text("".join(f"{k}: {v}\n" for k, v in DEMO_OVERRIDES.items() if k != "iterations"))
    p4 = _run("--tracker", "dino", "--iterations", "20", "--config", demo_cfg, "--video", tmp_path / "o" / "demo" /
              "demo.mp4", "--grid-size", "12", "--out", tmp_path / "o4", "--json", "--no-overlay", env=env)
    s4 = json.loads(p4.stdout)
    assert s4["work_dir"] == s["work_dir"] and s4["points"] == 144, p4.stderr[-1500:]
    first4 = s4["time_estimates"][0]
    grows_by = first4["left_s"] / first["left_s"]                         # planned: 144 queries vs 6
    really_grows_by = (s4["total_s"] - first4["at_s"]) / really_left      # measured, the same two runs
    assert really_grows_by / 1.5 <= grows_by <= 1.5 * really_grows_by, (first4, first, s4["total_s"], s2["total_s"])
    assert s2["cache_cap_gb"] == 5.0 and s2["cache_bytes"] >= s2["work_dir_bytes"]
    p3 = _run("--tracker", "dino", "--iterations", "20", "--out", tmp_path / "o3", "--no-overlay", env=env)
    assert re.search(r"work folder .*; the cache holds \d+\.\d MB, cap 5 GB \(--cache-max-gb\)", p3.stdout), p3.stdout
    info = _run("--cache-info", env=env)
    assert work.name in info.stdout and info.stdout.startswith(f"{tmp_path / 'cache' / 'tracker'}: 1 work folder(s)")


def test_visible_share_never_rounds_to_a_claim():
    from tracker.commands.track import share_text

    # hand-computed: 239/240 = 99.583 %, 1/240 = 0.417 %, 99,999/100,000 = 99.999 %
    assert share_text(239, 240) == "99.6%" and share_text(1, 240) == "0.4%"
    assert share_text(99_999, 100_000) == "99.999%" and share_text(1, 100_000) == "0.001%"
    assert share_text(240, 240) == "100%" and share_text(0, 240) == "0%" and share_text(120, 240) == "50%"


def _main(argv, capsys):
    from tracker.commands.track import main

    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code, capsys.readouterr()


def test_a_query_beyond_a_cut_clip_says_it_was_cut_and_how_to_fix(tmp_path, capsys):
    video, _, _ = make_demo_clip(tmp_path / "clip")                      # 24 frames
    pts = tmp_path / "pts.json"
    pts.write_text(json.dumps({"points": [{"frame": 15, "x": 10, "y": 10, "name": "late"}]}))
    out = tmp_path / "out"
    code, cap = _main(["--video", video, "--max-frames", 10, "--points", pts, "--tracker", "static", "--out", out],
                      capsys)
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors == cap.err.splitlines()[-1:] and not out.exists()
    assert "frame 15 is out of range [0, 9]: --max-frames 10 cut the clip to frames 0-9" in cap.err
    assert "-- raise or drop --max-frames" in cap.err
    code, cap = _main(["--video", video, "--max-frames", 10, "--grid-size", 3, "--query-frame", 15, "--tracker",
                       "static", "--out", out], capsys)
    assert code == 2 and "--max-frames 10 cut the clip to frames 0-9 -- raise or drop --max-frames" in cap.err
    # a clip that is not cut keeps the plain message
    code, cap = _main(["--video", video, "--points", pts, "--tracker", "static", "--out", out, "--max-frames", 30],
                      capsys)
    assert code == 0
    pts.write_text(json.dumps({"points": [{"frame": 30, "x": 10, "y": 10}]}))
    code, cap = _main(["--video", video, "--points", pts, "--tracker", "static", "--out", tmp_path / "o2"], capsys)
    assert code == 2 and "cut the clip" not in cap.err and "0-based frame index" in cap.err


def test_the_work_cache_has_a_default_cap(monkeypatch):
    from tracker.commands.track import DEFAULT_CACHE_MAX_GB, build_parser, cache_cap_gb

    monkeypatch.delenv("COSETTLE_CACHE_MAX_GB", raising=False)
    assert cache_cap_gb(build_parser().parse_args([])) == DEFAULT_CACHE_MAX_GB == 5.0   # it was None: no cap
    assert cache_cap_gb(build_parser().parse_args(["--cache-max-gb", "inf"])) == float("inf")     # no cap
    monkeypatch.setenv("COSETTLE_CACHE_MAX_GB", "2")
    assert cache_cap_gb(build_parser().parse_args([])) == 2.0
