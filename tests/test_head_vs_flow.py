"""badja_eval/head_vs_flow.py: the per-entry comparison of head and flow, on hand-made entries, and the
script's refusal of a folder without the cached predictions (one error line, exit 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from badja_eval.head_vs_flow import by_state, compare, evaluated_entries, seg_hits

REPO = Path(__file__).resolve().parents[1]


def test_seg_hits_radius_is_strict_and_per_frame():
    # frame 0: area 100 -> radius 0.2 * 10 = 2 px; frame 1: area 400 -> 4 px
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[2.0, 0.0], [0.0, 3.9]]])  # exactly on the 2 px radius (a miss), then 3.9 < 4 (a hit)
    assert seg_hits(pred, gt, np.array([100.0, 400.0])).tolist() == [[False, True]]


def test_compare_counts_each_cell_and_the_fused_share():
    # 1 joint x 6 frames; frame 0 is the query frame and is never scored; frame 5 is not visible
    head = np.array([[1, 1, 1, 0, 0, 1]], bool)
    flow = np.array([[1, 1, 0, 1, 0, 0]], bool)
    fused = np.array([[1, 0, 1, 1, 1, 1]], bool)
    visible = np.array([[1, 1, 1, 1, 1, 0]], bool)
    ev = evaluated_entries(visible, np.array([0]))
    assert ev.tolist() == [[False, True, True, True, True, False]]
    r = compare(head, flow, fused, ev)
    # scored frames 1..4: (h, f, g) = (1,1,0) (1,0,1) (0,1,1) (0,0,1)
    assert r["count"] == 4
    assert {c: r[c]["entries"] for c in ("both", "head_only", "flow_only", "neither")} == \
        {"both": 1, "head_only": 1, "flow_only": 1, "neither": 1}
    assert r["both"]["fused_right"] == 0.0 and r["head_only"]["fused_right"] == 100.0
    assert r["flow_only"]["fused_right"] == 100.0 and r["neither"]["fused_right"] == 100.0
    assert (r["head"], r["flow"], r["oracle"], r["fused"]) == (50.0, 50.0, 75.0, 75.0)
    assert r["head_only"]["share"] == 25.0


def test_compare_without_fused_and_with_an_empty_cell():
    h = np.array([[1, 1]], bool)
    r = compare(h, h, None, np.ones((1, 2), bool))
    assert r["fused"] is None and r["both"]["fused_right"] is None
    assert r["head_only"] == {"entries": 0, "share": 0.0, "fused_right": None}
    assert r["oracle"] == r["head"] == 100.0


@pytest.mark.parametrize("extra", [[], ["--benchmark", "synthetic"]])
def test_script_refuses_a_folder_without_cached_predictions(shared_dir, tmp_path, extra):
    p = subprocess.run([sys.executable, REPO / "scripts" / "head_vs_flow.py", "--data-root", shared_dir / "data",
                        "--sequences", "cows", "--backends", "dsift", "--out", tmp_path / "empty", *extra],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and " -- " in lines[0]
    assert ("no cached flow" in lines[0]) if not extra else ("BADJA" in lines[0])
    assert not (tmp_path / "empty" / "cache").exists() or not any((tmp_path / "empty" / "cache").rglob("*.npz"))


def test_by_state_counts_each_state_over_the_evaluated_entries():
    """Six entries, the last not evaluated. States 0, 1, 1, 2, 2 (+ 1 unevaluated); head right on entries 1, 3,
    5; fused right on 2, 3. State 1: entries 1 and 2 -> head right 50 %, fused 50 %, one head-only (1) and one
    fused-only (2). State 2: entries 3 and 4 -> head 50 %, fused 50 %, both right on 3, neither on 4. State 0:
    entry 0, nobody right. State 3 never occurs: left out. Shares of the 5 evaluated: 20, 40, 40 %."""
    names = ("a", "b", "c", "d")
    state = np.array([[0, 1, 1, 2, 2, 1]])
    head = np.array([[0, 1, 0, 1, 0, 1]], bool)
    fused = np.array([[0, 0, 1, 1, 0, 0]], bool)
    ev = np.array([[1, 1, 1, 1, 1, 0]], bool)
    r = by_state(head, fused, state, ev, names)
    assert list(r) == ["a", "b", "c"]
    assert r["a"] == {"entries": 1, "share": 20.0, "head_right": 0.0, "fused_right": 0.0, "head_only": 0, "fused_only": 0}
    assert r["b"] == {"entries": 2, "share": 40.0, "head_right": 50.0, "fused_right": 50.0, "head_only": 1,
                      "fused_only": 1}
    assert r["c"] == {"entries": 2, "share": 40.0, "head_right": 50.0, "fused_right": 50.0, "head_only": 0,
                      "fused_only": 0}
