"""scripts/make_results.py (badja_eval/results_page.py): the generated results page shows the right numbers
(mean ± s.d. over seed folders, computed by hand here), stamps versions and the commit beside every table,
says "not recorded" for a version a folder lacks and "stale" for a table made at an older commit, and
writes the page atomically. One test runs a tiny synthetic evaluation through --run."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from badja_eval import results_page as rp
from cosettle.provenance import git_sha

REPO = Path(__file__).resolve().parents[1]
OLD_SHA = "0" * 40  # a commit that is not in this checkout: "stale?"


def _rows(seq_vals: dict) -> list[dict]:
    """{(sequence, tracker): (delta_seg, delta_3px)} -> results.json rows in the evaluator's format."""
    rows = []
    for (seq, tracker), (seg, px) in seq_vals.items():
        rows.append({"sequence": seq, "tracker": tracker, "backend": "-" if tracker == "flow" else "dsift",
                     "delta_seg": seg, "delta_3px": px, "false_visible": None, "visible": 50.0, "count": 151})
    return rows


def _folder(root: Path, name: str, rows: list[dict], info: dict | None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "benchmark": "badja", "protocol": "BADJA: test protocol line", "metrics": ["delta_seg", "delta_3px"],
        "note": "percentages", "rows": rows, "per_video": {}}))
    if info is not None:
        (d / "run_info.json").write_text(json.dumps(info))
    return d


def _info(sha: str, **kw) -> dict:
    info = {"git_sha": sha, "time_utc": "2026-12-04T21:56:46+00:00", "command": "badja_eval/run.py --x 1",
            "torch": "2.14.1", "torch_threads": 1, "numpy": "2.4.6", "timm": "1.0.31", "opencv": "5.1.0"}
    info.update(kw)
    return {k: v for k, v in info.items() if v is not None}


def _manifest(path: Path, tables: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"title": "Test results", "tables": tables}, allow_unicode=True))
    return path


def _make(argv) -> int:
    with pytest.raises(SystemExit) as ei:
        rp.main([str(a) for a in argv])
    return ei.value.code


@pytest.fixture
def runs(tmp_path):
    """Three seed folders at the current commit (the third without an OpenCV version) and one single
    folder made at a commit this checkout does not know."""
    head = git_sha()
    vals = [{("clip", "flow"): (40.0, 10.0), ("clip", "dino-flow"): (60.0, 14.0)},
            {("clip", "flow"): (40.0, 10.0), ("clip", "dino-flow"): (62.0, 15.0)},
            {("clip", "flow"): (40.0, 10.0), ("clip", "dino-flow"): (67.0, 19.0)}]
    root = tmp_path / "runs"
    for s, v in enumerate(vals):
        _folder(root, f"seeded_s{s}", _rows(v), _info(head, opencv=None if s == 2 else "5.1.0"))
    _folder(root, "old", _rows({("clip", "flow"): (39.74, 10.6)}), _info(OLD_SHA, timm=None))
    man = _manifest(tmp_path / "results.yaml", [
        {"id": "seeded", "title": "Seeded table", "args": "--trackers flow,dino-flow --tracker-args dino-flow.seed={seed}",
         "out": "seeded_s{seed}", "seeds": [0, 1, 2], "rows": {"tracker": ["dino-flow", "flow"]},
         "columns": ["delta_seg", "delta_3px", "count"]},
        {"id": "old", "title": "Old table", "args": "--trackers flow", "out": "old",
         "columns": ["delta_seg", "delta_3px"]}])
    return root, man, head


def _table(page: str, title: str) -> str:
    start = page.index(f"## {title}")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


def test_page_numbers_stamp_and_marks(runs, tmp_path, capsys):
    root, man, head = runs
    out = tmp_path / "docs" / "results.md"
    assert _make(["--manifest", man, "--runs-root", root, "--out", out]) == 0
    page = out.read_text()
    seeded = _table(page, "Seeded table")
    # dino-flow δseg 60, 62, 67: mean 63.00, sample s.d. sqrt(((−3)² + (−1)² + 4²) / 2) = sqrt(13) = 3.61
    # δ3px 14, 15, 19: mean 16.00, s.d. sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.65; flow has no spread
    assert "| clip | dino-flow | dsift | 63.00 ± 3.61 | 16.00 ± 2.65 | 151 |" in seeded
    assert "| clip | flow | - | 40.00 ± 0.00 | 10.00 ± 0.00 | 151 |" in seeded
    assert seeded.index("dino-flow | dsift") < seeded.index("| flow |")  # the manifest's row order
    # versions and commit beside the table; the seed folder without an OpenCV version says so
    assert f"git `{head[:7]}" in seeded and "current: made at this page's commit" in seeded
    assert "torch 2.14.1" in seeded and "timm 1.0.31" in seeded and "numpy 2.4.6" in seeded
    assert "OpenCV 5.1.0 / not recorded" in seeded and "torch threads 1" in seeded
    assert "date 2026-12-04 21:56:46 UTC" in seeded
    assert "python badja_eval/run.py --x 1" in seeded
    old = _table(page, "Old table")
    assert "| clip | flow | 39.74 | 10.60 |" in old  # one folder: no ±; one backend: no backend column
    assert "timm not recorded" in old and "OpenCV 5.1.0" in old
    assert f"git `{OLD_SHA[:7]}`" in old and "**stale?**" in old
    assert page.count("**Made with**") == 2
    assert f"at git `{head[:7]}" in page  # the page says which commit it was generated at


def test_stale_when_code_changed_since(runs, tmp_path):
    """A table made at an ancestor commit whose code differs from HEAD's is marked stale."""
    root, man, head = runs
    commits = subprocess.run(["git", "rev-list", "HEAD", "--", "cosettle", "tracker", "badja_eval"],
                             cwd=REPO, capture_output=True, text=True).stdout.split()
    if len(commits) < 2:
        pytest.skip("needs a git history with code changes")
    parent = commits[1]  # before the last code change: code differs from HEAD
    (root / "old" / "run_info.json").write_text(json.dumps(_info(parent)))
    out = tmp_path / "results.md"
    assert _make(["--manifest", man, "--runs-root", root, "--out", out]) == 0
    old = _table(out.read_text(), "Old table")
    assert f"**stale**: made at `{parent[:7]}`" in old and "code changed since then" in old


def test_atomic_write_keeps_the_old_page_on_error(runs, tmp_path, capsys, monkeypatch):
    root, man, _ = runs
    out = tmp_path / "results.md"
    out.write_text("previous page\n")
    # a folder with a broken results.json: an error before anything is written
    (root / "old" / "results.json").write_text('{"rows": [')
    assert _make(["--manifest", man, "--runs-root", root, "--out", out]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert out.read_text() == "previous page\n"
    # a failure while the page itself is being written: the old page stays, no temp file is left
    (root / "old" / "results.json").write_text(json.dumps({"rows": _rows({("clip", "flow"): (1.0, 2.0)})}))

    def failing_write(self, text, *a, **k):
        Path.write_bytes(self, text[:10].encode())  # a partial write, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError):
        rp.main(["--manifest", str(man), "--runs-root", str(root), "--out", str(out)])
    monkeypatch.undo()
    assert out.read_text() == "previous page\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["results.md", "results.yaml", "runs"])


def test_missing_folder_is_a_one_line_error(runs, tmp_path, capsys):
    root, man, _ = runs
    out = tmp_path / "results.md"
    assert _make(["--manifest", man, "--runs-root", tmp_path / "nowhere", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no results.json" in err and "--run" in err
    assert not out.exists()


def test_run_makes_a_tiny_synthetic_table(tmp_path):
    """--run calls the evaluator for the missing folder (the smallest synthetic benchmark the evaluator's
    own tests use: one 3-frame easy video, static tracker), then reads what it wrote. About 12 s on the
    2-core machine, so not marked slow."""
    man = _manifest(tmp_path / "results.yaml", [
        {"id": "tiny", "title": "Tiny synthetic", "out": "tiny",
         "args": "--benchmark synthetic --difficulty easy --num-videos 1 --num-frames 3 --trackers static",
         "env": {"OMP_NUM_THREADS": 1}, "columns": ["average_jaccard", "occlusion_accuracy"]}])
    out = tmp_path / "results.md"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.time()
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "make_results.py"), "--manifest", str(man),
                        "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--run"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "runs" / "tiny" / "run_info.json").read_text())
    res = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    page = out.read_text()
    row = next(r for r in res["rows"] if r["sequence"] == "easy")
    assert f"| easy | static | {row['average_jaccard']:.2f} | {row['occlusion_accuracy']:.2f} |" in page
    assert f"OpenCV {info['opencv']}" in page and "torch threads 1" in page
    assert "python badja_eval/run.py --benchmark synthetic" in page and "`OMP_NUM_THREADS=1`" in page
    print(f"--run tiny synthetic: {time.time() - t0:.1f} s")


def test_run_info_records_opencv():
    """Every output's run_info.json names the OpenCV version (DIS flow, hence every flow number, depends
    on it); the results page stamps it."""
    import cv2

    from cosettle.provenance import run_info

    assert run_info()["opencv"] == cv2.__version__


@pytest.fixture
def tiny_git(tmp_path, monkeypatch):
    """A throwaway git repository standing in for the checkout: c1 (code), c2 (docs only), c3 (code again);
    the results page and git_sha look at it."""
    import cosettle.provenance as prov

    repo = tmp_path / "repo"
    (repo / "tracker").mkdir(parents=True)
    (repo / "docs").mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    shas = []
    for path, text in (("tracker/rule.py", "x = 1\n"), ("docs/page.md", "words\n"), ("tracker/rule.py", "x = 2\n")):
        (repo / path).write_text(text)
        git("add", path)
        git("commit", "-q", "-m", path)
        shas.append(git("rev-parse", "HEAD"))
    monkeypatch.setattr(rp, "REPO_ROOT", repo)
    monkeypatch.setattr(prov, "REPO_ROOT", repo)
    return repo, shas


def test_current_marks_and_uncommitted_changes(tiny_git):
    """'current' only when no code changed between the run's commit and the page's; a run made with
    uncommitted changes is never 'current' from another commit (its changes cannot be compared)."""
    _, (c1, c2, c3) = tiny_git
    assert rp.freshness([c1], c2) == f"current: made at `{c1[:7]}`, no code changed since (only docs/scripts)"
    assert rp.freshness([c2], c2) == "current: made at this page's commit"
    assert rp.freshness([c2 + "-dirty"], c2) == "current: made at this page's commit with uncommitted changes"
    stale = rp.freshness([c1], c3)
    assert stale.startswith(f"**stale**: made at `{c1[:7]}`, code changed since then") and f"`{c3[:7]}`" in stale
    dirty_old = rp.freshness([c1 + "-dirty"], c2)
    assert "current" not in dirty_old and f"`{c1[:7]}-dirty` with uncommitted changes" in dirty_old
    # two folders of one table, one current and one stale: both marks, once each
    both = rp.freshness([c2, c1, c2], c3)
    assert both.count("**stale**") == 2 and both.count("; ") == 1


def test_git_sha_marks_a_dirty_tree_but_not_untracked_files(tiny_git):
    repo, (_, _, c3) = tiny_git
    assert git_sha() == c3
    (repo / "notes.txt").write_text("untracked")  # not part of any run's code
    assert git_sha() == c3
    (repo / "tracker" / "rule.py").write_text("x = 3\n")
    assert git_sha() == c3 + "-dirty"


def test_page_marks_a_docs_only_older_run_current(tiny_git, tmp_path):
    """End to end: a folder made at c1 on a page generated at c2 (docs changed only) is marked current."""
    repo, (c1, c2, _) = tiny_git
    subprocess.run(["git", "checkout", "-q", c2], cwd=repo, check=True)  # the page is generated at c2
    root = tmp_path / "runs"
    _folder(root, "old", _rows({("clip", "flow"): (39.74, 10.6)}), _info(c1))
    man = _manifest(tmp_path / "results.yaml", [{"id": "old", "title": "Old table", "args": "--trackers flow",
                                                 "out": "old", "columns": ["delta_seg", "delta_3px"]}])
    out = tmp_path / "results.md"
    assert _make(["--manifest", man, "--runs-root", root, "--out", out]) == 0
    page = out.read_text()
    old = _table(page, "Old table")
    assert f"current: made at `{c1[:7]}`, no code changed since (only docs/scripts)" in old
    assert f"at git `{c2[:7]}`" in page and "**stale" not in old


def test_keep_missing_copies_a_table_whose_folders_are_gone_and_renders_the_rest(runs, tmp_path):
    """--keep-missing: the 'Old table' folder is removed; its section is copied verbatim from the current page
    (marked as copied, with that page's commit) while 'Seeded table' is rendered from its folders. Without the
    flag the run stops and names the missing folder; a table the page lacks too still stops it."""
    root, man, head = runs
    page = tmp_path / "page.md"
    assert _make(["--manifest", man, "--runs-root", root, "--out", page]) == 0
    before = page.read_text()
    old_section = before[before.index("## Old table"):]
    (root / "old" / "results.json").unlink()
    assert _make(["--manifest", man, "--runs-root", root, "--out", page]) == 2  # the usual error
    assert page.read_text() == before                                          # and nothing written
    assert _make(["--manifest", man, "--runs-root", root, "--out", page, "--keep-missing"]) == 0
    after = page.read_text()
    copied = after[after.index("## Old table"):]
    sha = re.search(r"^Generated .*? at git `([^`]+)`", before, re.M).group(1)  # the page's own stamp
    assert sha.startswith(head[:7])
    assert f"*Copied unchanged from the page generated at git `{sha}`" in copied
    # every line of the old section is still there, in order, the note inserted after the title only
    assert copied.replace(copied.split("\n")[2] + "\n\n", "", 1).rstrip() == old_section.rstrip()
    assert "| dino-flow |" in after[after.index("## Seeded table"):after.index("## Old table")]
    # a second run keeps the first page's commit in the note (no second note)
    assert _make(["--manifest", man, "--runs-root", root, "--out", page, "--keep-missing"]) == 0
    assert page.read_text().count("*Copied unchanged") == 1
    # a missing table that the page does not hold either: the usual error
    page.write_text(before[:before.index("## Old table")])
    assert _make(["--manifest", man, "--runs-root", root, "--out", page, "--keep-missing"]) == 2


def test_run_gives_each_output_folder_its_own_tracker_cache(tmp_path, monkeypatch):
    """--run / --rerun: the evaluation's subprocess gets ``COSETTLE_TRACKER_CACHE=<folder>/tracker_cache`` (over
    whatever the caller's environment says), and --rerun moves the old folder aside with its tracker cache, so
    the new run starts from no cached fit. The evaluator is faked here (it writes results.json)."""
    monkeypatch.setenv("COSETTLE_TRACKER_CACHE", str(tmp_path / "shared_old_fits"))
    seen = []

    def fake_eval(cmd, cwd=None, env=None):
        folder = Path(cmd[cmd.index("--out") + 1])
        seen.append((folder, env))
        cache = Path(env["COSETTLE_TRACKER_CACHE"])
        assert not cache.exists(), "a run started with fits already cached"
        (cache / "work" / "train_k").mkdir(parents=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(rp.subprocess, "run", fake_eval)
    spec = rp.TableSpec(id="t", title="T", args="--trackers dino", out="t", columns=["delta_seg"],
                        env={"OMP_NUM_THREADS": "1"})
    folder = tmp_path / "runs" / "t"
    rp.run_evaluation(spec, None, folder, None, rerun=False)
    rp.run_evaluation(spec, None, folder, None, rerun=True)
    assert [f for f, _ in seen] == [folder, folder]
    for _, env in seen:
        assert env["COSETTLE_TRACKER_CACHE"] == str(folder / "tracker_cache") and env["OMP_NUM_THREADS"] == "1"
    aside = [p for p in folder.parent.iterdir() if p.name.startswith("t.old-")]
    assert len(aside) == 1 and (aside[0] / "tracker_cache" / "work" / "train_k").is_dir()
    assert not (tmp_path / "shared_old_fits").exists()


def test_run_trains_dino_in_the_folder_cache_and_records_fit_git(tmp_path):
    """End to end with a real 2-iteration DINO-Tracker fit on a 3-frame synthetic video (about 20 s on the
    loaded 2-core machine): the fit lands in <folder>/tracker_cache with its fit_info.json, nothing in
    $COSETTLE_CACHE/tracker, and run_info.json names the fit's code (fit_git)."""
    man = _manifest(tmp_path / "results.yaml", [
        {"id": "tiny", "title": "Tiny synthetic DINO", "out": "tiny",
         "args": "--benchmark synthetic --difficulty easy --num-videos 1 --num-frames 3 --trackers dino "
                 "--backends dsift --tracker-args dino.iterations=2,dino.cyc_after=1,dino.rbb_after=1,"
                 "dino.checkpoint_every=1",
         "env": {"OMP_NUM_THREADS": 1}, "columns": ["average_jaccard"]}])
    env = {k: v for k, v in os.environ.items() if k != "COSETTLE_TRACKER_CACHE"}
    env.update(PYTHONPATH=str(REPO), COSETTLE_CACHE=str(tmp_path / "global"))
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "make_results.py"), "--manifest", str(man),
                        "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "results.md"), "--run"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    folder = tmp_path / "runs" / "tiny"
    infos = list((folder / "tracker_cache").glob("*/train_*/fit_info.json"))
    assert len(infos) == 1 and not (tmp_path / "global" / "tracker").exists()
    session = json.loads(infos[0].read_text())["sessions"][0]
    assert session["git_sha"] == git_sha() and session["iterations_done"] == 2
    fit_git = json.loads((folder / "run_info.json").read_text())["fit_git"]
    assert fit_git == {"easy_000|dino/dsift": git_sha()}


def test_page_names_the_code_that_trained_the_fits(tmp_path):
    """run_info.json's fit_git (the code that trained each DINO fit) is stamped beside the table with its own
    freshness mark: a table run at this commit from fits an unknown older commit trained is not 'current'."""
    head = git_sha()
    rows = _rows({("clip", "dino-flow"): (60.0, 14.0)})
    _folder(tmp_path / "runs", "new", rows, _info(head, fit_git={"clip|dino-flow/dsift": head}))
    _folder(tmp_path / "runs", "reused", rows, _info(head, fit_git={"clip|dino-flow/dsift": OLD_SHA,
                                                                   "clip|dino/dsift": "not recorded"}))
    man = _manifest(tmp_path / "results.yaml", [
        {"id": t, "title": t, "args": "--trackers dino-flow", "out": t, "columns": ["delta_seg"]}
        for t in ("new", "reused")])
    out = tmp_path / "results.md"
    assert _make(["--manifest", man, "--runs-root", tmp_path / "runs", "--out", out]) == 0
    page = out.read_text()
    new, reused = _table(page, "new"), _table(page, "reused")
    assert f"fits trained at git `{head[:7]}" in new and new.count("current: made at this page's commit") == 2
    assert f"fits trained at git `{OLD_SHA[:7]} / not recorded` (**stale?**" in reused
