"""Smoke run of the Co-Settle training benchmark (the real numbers are in docs/cosettle.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_reports_both_precisions():
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--backend", "timm:vit_tiny_patch16_224",
           "--size", "32", "--batch-size", "1", "--iters", "1", "--warmup", "0", "--repeats", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert set(d["runs"]) == {"fp32", "bf16"} and d["runs"]["bf16"]["autocast_dtype"] == "torch.bfloat16"
    for run in d["runs"].values():
        assert run["samples_per_s"] > 0 and run["peak_rss_mb"] > 100
        assert run["projector_params"] == 192 * 192 + 3 * 192  # ViT-Ti: C = 192
