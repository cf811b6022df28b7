"""Smoke runs of the Co-Settle experiment scripts (the real numbers are in docs/cosettle.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script)] + args, capture_output=True, text=True,
                          timeout=180)


def test_position_shortcut_script_runs_both_arms():
    r = _run("position_shortcut.py", ["--size", "64", "--images", "16", "--batch-size", "4", "--steps", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert set(d["results"]) == {"without_pea", "with_pea"} and d["nodes"] == 4 and d["pe_scale"] == 30.0
    for arm in d["results"].values():
        assert set(arm["before"]) == {"eval_no_pea", "eval_pea"}
        # both arms start from the same seeded projector
    assert d["results"]["with_pea"]["before"] == d["results"]["without_pea"]["before"]
    bad = _run("position_shortcut.py", ["--images", "4", "--batch-size", "4"])
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_bench_train_reports_both_precisions():
    r = _run("bench_train.py", ["--backend", "timm:vit_tiny_patch16_224", "--size", "32", "--batch-size", "1",
                                "--iters", "1", "--warmup", "0", "--repeats", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert set(d["runs"]) == {"fp32", "bf16"} and d["runs"]["bf16"]["autocast_dtype"] == "torch.bfloat16"
    for run in d["runs"].values():
        assert run["samples_per_s"] > 0 and run["peak_rss_mb"] > 100
        assert run["projector_params"] == 192 * 192 + 3 * 192  # ViT-Ti: C = 192
