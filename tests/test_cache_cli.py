"""The work cache (tracker/workdirs.py, scripts/track.py --cache-info / --clean-cache / --cache-max-gb) on a
temporary $COSETTLE_CACHE with fake work folders of known sizes and ages."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tracker.workdirs import clean, enforce_cap, folder_bytes, list_work_folders

DAY = 86400


def _folder(root, name, sizes, age_days, now):
    d = root / name
    (d / "sub").mkdir(parents=True)
    for k, n in enumerate(sizes):
        (d / ("sub" if k % 2 else ".") / f"f{k}.bin").write_bytes(b"x" * n)
    t = now - age_days * DAY
    for p in [d, *d.rglob("*")]:
        os.utime(p, (t, t))
    return d


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSETTLE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "tracker"
    now = time.time()
    _folder(root, "old", [3000, 2000], 40, now)     # 5000 B, 40 days
    _folder(root, "mid", [1000, 1000], 10, now)     # 2000 B, 10 days
    _folder(root, "new", [700], 0.01, now)          # 700 B, 15 min
    return root


def test_list_sizes_and_ages(cache):
    got = {f.path.name: f for f in list_work_folders(cache)}
    assert [f.path.name for f in list_work_folders(cache)] == ["old", "mid", "new"]  # oldest first
    assert {k: f.bytes for k, f in got.items()} == {"old": 5000, "mid": 2000, "new": 700}
    assert got["old"].age_days() == pytest.approx(40, abs=0.01) and got["new"].age_days() < 0.02
    assert folder_bytes(cache) == 7700


def test_clean_older_than_keeps_recent_and_in_use(cache):
    removed, kept = clean(cache, older_than_days=30)
    assert [f.path.name for f in removed] == ["old"] and not kept
    assert sorted(p.name for p in cache.iterdir()) == ["mid", "new"]
    # a running job holds the lock of "mid": a full clean leaves it
    from cosettle.io.lock import folder_lock

    with folder_lock(cache / "mid"):
        import subprocess
        import sys
        code = ("import sys; from pathlib import Path; from tracker.workdirs import clean; "
                "r, k = clean(Path(sys.argv[1])); print(len(r), len(k))")
        p = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=os.getcwd()), check=True)
    assert p.stdout.split() == ["1", "1"] and [x.name for x in cache.iterdir()] == ["mid"]


def test_cap_evicts_oldest_first_never_the_current(cache):
    removed, now_bytes = enforce_cap(cache, 3000, keep={cache / "old"})
    # "old" is the current run's folder: kept although oldest. Then least recently used first: "mid"
    # (5700 B left, above the cap), then "new" (5000 B: the cap cannot be met, nothing else may go)
    assert [f.path.name for f in removed] == ["mid", "new"] and now_bytes == 5000
    removed, now_bytes = enforce_cap(cache, 10_000)
    assert removed == [] and now_bytes == 5000


def _main(argv, capsys):
    from tracker.commands.track import main

    with pytest.raises(SystemExit) as ei:
        main(argv)
    return ei.value.code, capsys.readouterr()


def test_cli_cache_info_and_clean(cache, capsys):
    code, cap = _main(["--cache-info"], capsys)
    assert code == 0 and cap.err == ""
    lines = cap.out.splitlines()
    assert lines[0] == f"{cache}: 3 work folder(s), 8 KB"  # 7700 B
    assert [ln.split()[-1] for ln in lines[1:4]] == ["new", "mid", "old"]  # most recently used first
    assert "40 days ago" in lines[3]
    code, cap = _main(["--cache-info", "--json"], capsys)
    info = json.loads(cap.out)
    assert info["total_bytes"] == 7700 and {f["bytes"] for f in info["folders"]} == {5000, 2000, 700}
    code, cap = _main(["--clean-cache", "--older-than", "5"], capsys)
    assert code == 0 and "removed 2 work folder(s) unused for more than 5 days" in cap.out
    assert [p.name for p in cache.iterdir()] == ["new"]
    code, cap = _main(["--clean-cache"], capsys)
    assert code == 0 and "removed 1 work folder(s)" in cap.out and list(cache.iterdir()) == []


def test_cli_cache_flag_errors_are_one_line(cache, capsys):
    code, cap = _main(["--older-than", "3"], capsys)
    assert code == 2 and cap.err.startswith("error: --older-than applies to --clean-cache") and cap.err.count("\n") == 1
    code, cap = _main(["--cache-max-gb", "-1", "--tracker", "static"], capsys)
    assert code == 2 and "cache cap" in cap.err and cap.err.count("\n") == 1


def test_cap_during_a_real_run_keeps_the_current_folder_and_folders_in_use(cache, tmp_path, capsys):
    """A real (tiny) dino run with --cache-max-gb 0: every other work folder goes, oldest first, except the
    run's own folder (its outputs intact) and one another process holds (a child holding its lock)."""
    import subprocess
    import sys

    from cosettle.io.video import write_video
    from tests._tracker_synth import translating_clip

    now = time.time()
    busy = _folder(cache, "busy", [4000], 50, now)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cosettle.io.lock import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()",
         str(busy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "locked"
        video = write_video(tmp_path / "clip.mp4", translating_clip(48, 64, 4, 2, 1), fps=10)
        pts = tmp_path / "pts.json"
        pts.write_text(json.dumps({"points": [{"frame": 0, "x": 30, "y": 20}]}))
        code, cap = _main(["--video", str(video), "--points", str(pts), "--out", str(tmp_path / "out"),
                           "--tracker", "dino", "--iterations", "2", "--stride", "4", "--no-overlay",
                           "--cache-max-gb", "0", "--json"], capsys)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert code == 0, cap.err
    summary = json.loads(cap.out)
    work = Path(summary["work_dir"])
    assert work.parent == cache.resolve() and work.is_dir()
    assert [Path(p).name for p in summary["cache_evicted"]] == ["old", "mid", "new"]  # least recently used first
    assert sorted(p.name for p in cache.iterdir()) == sorted(["busy", work.name])
    assert summary["cache_bytes"] == folder_bytes(busy) + folder_bytes(work)
    assert (tmp_path / "out" / "tracks.npz").is_file()
