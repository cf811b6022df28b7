"""scripts/vos_select.py (badja_eval/vos_select.py): settings chosen on the tune half, reported on the held-out half."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badja_eval import davis_vos, vos_select
from badja_eval.davis_vos import VosSettings

REPO = Path(__file__).resolve().parents[1]
H, W, T = 96, 128, 5
TUNE, HELD = ("blackswan", "libby"), ("goat", "cows")  # davis_vos.HELD_OUT holds goat and cows


def _make_root(tmp_path, names):
    """davis480/<name>/{JPEGImages,Annotations}: a textured background, a bright square moving right (binary mask)."""
    root = tmp_path / "data"
    yy, xx = np.mgrid[0:H, 0:W]
    for n, name in enumerate(names):
        d = root / "davis480" / name
        (d / "JPEGImages").mkdir(parents=True)
        (d / "Annotations").mkdir(parents=True)
        for t in range(T):
            img = np.stack([(xx * 7 + yy * 3 + n) % 97 + 60, (xx * 5 + yy * 11) % 89 + 60, (xx * 13) % 83 + 60], -1)
            lab = np.zeros((H, W), np.uint8)
            x0 = 16 + 3 * t + 4 * n
            img[20:60, x0:x0 + 40] = (250, 240, 30)
            lab[20:60, x0:x0 + 40] = 255
            Image.fromarray(img.astype(np.uint8)).save(d / "JPEGImages" / f"{t:05d}.jpg", quality=95)
            Image.fromarray(lab).save(d / "Annotations" / f"{t:05d}.png")
    return root


def _score(jf):
    return {"jf": jf, "j": jf, "f": jf, "n_objects": 1, "clips": [], "per_clip_jf": {}}


def test_the_choice_reads_the_tune_half_only():
    """tune prefers topk 1, held-out prefers topk 3, the mean over all 18 clips prefers topk 3 too: only a
    choice made on the tune half picks topk 1; held-out runs come after it."""
    table = {(1, "tune"): 50.0, (3, "tune"): 40.0, (5, "tune"): 45.0,
             (1, "heldout"): 10.0, (3, "heldout"): 60.0, (5, "heldout"): 30.0}
    calls = []

    def evaluate(s, half):
        calls.append((s.topk, half))
        return _score(table[(s.topk, half)])

    grid = [VosSettings(topk=k) for k in (1, 3, 5)]
    rec = vos_select.select(grid, evaluate)
    assert rec["chosen"] == "topk1-queue7-nb12-t0.1" and rec["chosen_settings"]["topk"] == 1
    assert rec["tune_jf"] == 50.0 and rec["heldout_jf"] == 10.0  # the held-out score of the choice, not the best one
    assert [h for _, h in calls] == ["tune"] * 3 + ["heldout"] * 3
    assert [r["heldout"]["jf"] for r in rec["settings"]] == [10.0, 60.0, 30.0]
    calls.clear()
    rec = vos_select.select(grid, evaluate, heldout="chosen")
    assert calls == [(1, "tune"), (3, "tune"), (5, "tune"), (1, "heldout")]
    assert [r["heldout"] is None for r in rec["settings"]] == [False, True, True]
    # ties and NaN: the earlier setting in grid order
    assert vos_select.choose({"a": _score(1.0), "b": _score(1.0)}) == "a"
    assert vos_select.choose({"a": _score(float("nan")), "b": _score(0.5)}) == "b"


def _main(*args):
    try:
        return vos_select.main(list(args))
    except SystemExit as stop:
        return stop.code


def test_the_cli_chooses_on_the_tune_clips(tmp_path, monkeypatch, capsys):
    """The whole CLI with the benchmark's own split, each clip's result faked by (clip, topk): a choice from the
    held-out clips, from all clips, or from halves swapped picks topk 3."""
    root = _make_root(tmp_path, TUNE + HELD)
    seen = []

    def fake_evaluate_clip(backend, clip, s, out, backend_label=None, cache=None, progress=False):
        seen.append((clip.name, s.topk))
        x = {1: 0.6, 3: 0.4}[s.topk] if clip.name in TUNE else {1: 0.1, 3: 0.9}[s.topk]
        return {"objects": {f"{clip.name}_1": {"J": {"mean": x}, "F": {"mean": x}, "JF": x}}, "summary": {"JF": x}}

    monkeypatch.setattr(davis_vos, "evaluate_clip", fake_evaluate_clip)
    assert _main("--backend", "dsift", "--data-root", str(root), "--out", str(tmp_path / "o"), "--topk", "1,3",
                 "--quiet", "--feature-cache", str(tmp_path / "fc")) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["halves"] == {"tune": list(TUNE), "heldout": list(HELD)}
    assert rec["chosen_settings"]["topk"] == 1
    assert rec["tune_jf"] == pytest.approx(60.0) and rec["heldout_jf"] == pytest.approx(10.0)
    assert seen[:4] == [(c, k) for k in (1, 3) for c in TUNE]  # every tune clip before any held-out one
    assert {c for c, _ in seen[4:]} == set(HELD)
    assert json.loads((tmp_path / "o" / "selection.json").read_text())["chosen"] == rec["chosen"]


def test_real_propagation_files_resume_and_errors(tmp_path, capsys):
    """dsift on two tiny clips (one per half): the scores are the per-clip JSONs' means, a re-run recomputes
    nothing, and a data set without a held-out clip is a one-line error."""
    root = _make_root(tmp_path, ("blackswan", "goat"))
    args = ["--backend", "dsift", "--backend-args", "resolution=64", "--data-root", str(root), "--out",
            str(tmp_path / "o"), "--topk", "1,3", "--quiet", "--feature-cache", str(tmp_path / "fc")]
    assert _main(*args) == 0
    rec = json.loads(capsys.readouterr().out)
    best = max(rec["settings"], key=lambda r: r["tune"]["jf"])
    assert rec["chosen"] == best["label"] and rec["heldout_jf"] == best["heldout"]["jf"]
    for r in rec["settings"]:
        for half, clip in (("tune", "blackswan"), ("heldout", "goat")):
            res = json.loads((tmp_path / "o" / r["label"] / "sequences" / "dsift" / f"{clip}.json").read_text())
            assert res["settings"]["topk"] == r["topk"]
            assert r[half]["jf"] == pytest.approx(100 * res["summary"]["JF"]) and r[half]["clips"] == [clip]
            assert (tmp_path / "o" / r["label"] / "masks" / "dsift" / clip / "00003.png").is_file()
    assert rec["run_info"]["git_sha"] and rec["run_info"]["torch"] and "protocol" in rec
    js = sorted((tmp_path / "o").glob("*/sequences/dsift/*.json"))
    assert len(js) == 4
    before = [p.stat().st_mtime_ns for p in js]
    assert _main(*args) == 0  # resume: every clip read back
    again = json.loads(capsys.readouterr().out)
    assert [p.stat().st_mtime_ns for p in js] == before and again["settings"] == rec["settings"]
    only_tune = _make_root(tmp_path / "t", ("blackswan",))
    assert _main("--backend", "dsift", "--data-root", str(only_tune), "--out", str(tmp_path / "o2"), "--quiet") == 2
    assert "heldout half" in capsys.readouterr().err


def test_script_entry(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "vos_select.py"), "--backend", "dsift", "--topk", "1,1"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and "distinct" in p.stderr and "Traceback" not in p.stderr
