"""Peak-memory estimate: its parts against the bytes of what a tiny run holds, within 20 % of the measured peak RSS
at two sizes, and the pre-flight refusal through the CLI (exit 2, one line, nothing written)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cosettle.backends.registry import load_backend
from tracker.config import preset
import tracker.commands.track as track_command
from tracker.memory import MARGIN, estimate_peak_memory, frames_that_fit

REPO = Path(__file__).resolve().parents[1]


def test_parts_are_the_sizes_of_what_a_run_holds(tmp_path):
    """Each part of the estimate against the bytes of the arrays a real (tiny) run makes, not against the
    estimator's own formulas: the decoded video, the work-size masks, the feature grid, the float16 refined
    features and one float32 block of normalised maps; the trajectory stores must cover what chaining kept."""
    import torch

    from tests._tracker_synth import translating_clip
    from tracker.preprocess.pipeline import preprocess_video
    from tracker.dino.sampling import NormalisedMaps

    b = load_backend("dsift", patch_size=8, stride=4)
    cfg = preset("fast", resolution=None, infer_block_frames=4)
    video = translating_clip(128, 192, 8, 2, 1)  # every part >= 0.1 MB (they are rounded to 0.1 MB)
    pre = preprocess_video(video, b, cfg.preprocess, tmp_path, progress=False)
    est = estimate_peak_memory(8, 128, 192, b, cfg, num_queries=5, base_mb=100.0)
    mb = 1024.0 ** 2
    p = est["parts_mb"]  # rounded to 0.1 MB
    T, C, gh, gw = pre.features.shape
    assert est["grid"] == [gh, gw] and est["feat_dim"] == C
    assert p["video"] == pytest.approx(video.nbytes / mb, abs=0.05)
    assert p["masks"] == pytest.approx(pre.masks.nbytes / mb, abs=0.05)
    half = torch.zeros(pre.features.shape, dtype=torch.float16)  # what Tracker holds after refinement
    maps = NormalisedMaps(half, block=cfg.infer_block_frames)
    block = maps[0].element_size() * maps._maps.nelement()  # indexing a frame makes its block
    assert p["refine"] == pytest.approx((half.element_size() * half.nelement() + block) / mb, abs=0.05)
    # a translation keeps about one trajectory through each lattice point per frame, so the estimate's
    # density (made for real motion, with its new seeds) must cover the store this run chained
    store = pre.trajectories
    per_point = store.points.itemsize * store.points.shape[1]
    n_stores = 2 if cfg.preprocess.bb_flow_filter else 1
    assert p["trajectory_stores"] / n_stores >= len(store.points) * per_point / mb - 0.05
    # peaks grow with the clip; the frames that fit a limit are the largest count whose estimate fits
    assert (estimate_peak_memory(100, 40, 56, b, cfg, 5, 100.0)["peak_mb"]
            > estimate_peak_memory(10, 40, 56, b, cfg, 5, 100.0)["peak_mb"])
    n = frames_that_fit(1000.0, 40, 56, b, cfg, 5, base_mb=100.0)
    assert n > 10
    assert MARGIN * estimate_peak_memory(n, 40, 56, b, cfg, 5, 100.0)["peak_mb"] <= 1000.0
    assert MARGIN * estimate_peak_memory(n + 1, 40, 56, b, cfg, 5, 100.0)["peak_mb"] > 1000.0


CHILD = r"""
import json, sys, numpy as np
sys.path.insert(0, sys.argv[3])
from cosettle.backends.registry import load_backend
from cosettle.provenance import peak_rss_mb
from tests._tracker_synth import translating_clip
from tracker.api import Tracker
from tracker.config import preset
from tracker.memory import estimate_peak_memory
T, h = int(sys.argv[1]), 96
frames = translating_clip(h, 160, T, 2, 1)
b = load_backend("dsift", patch_size=8, stride=4)
cfg = preset("fast", resolution=None, iterations=4, cyc_after=2, rbb_after=2, batch_size=64,
             checkpoint_every=4, work_dir=sys.argv[2])
q = np.stack([np.zeros(16), np.linspace(10, 150, 16), np.full(16, 48.0)], 1)
est = estimate_peak_memory(T, h, 160, b, cfg, num_queries=len(q))
tr = Tracker(b, cfg, progress=False).fit(frames)
tr.track(q)
print(json.dumps({"estimate": est["peak_mb"], "peak": peak_rss_mb()}))
"""


@pytest.mark.parametrize("frames", [6, 24])
def test_estimate_within_20_percent_of_measured_peak(frames, tmp_path):
    p = subprocess.run([sys.executable, "-c", CHILD, str(frames), str(tmp_path / "w"), str(REPO)],
                       capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    print(r)
    assert abs(r["estimate"] - r["peak"]) <= 0.2 * r["peak"], r


def _cli():
    return track_command


def test_preflight_refuses_before_any_work(tmp_path, capsys, monkeypatch):
    from cosettle.io.video import write_video
    from tests._tracker_synth import translating_clip

    video = write_video(tmp_path / "clip.mp4", translating_clip(64, 96, 6, 3, 1), fps=10)
    out, work = tmp_path / "out", tmp_path / "work"
    monkeypatch.setenv("COSETTLE_MAX_MEMORY_MB", "64")  # a machine smaller than the interpreter itself
    with pytest.raises(SystemExit) as exc:
        _cli().main(["--video", str(video), "--grid-size", "2", "--out", str(out), "--work-dir", str(work),
                     "--backend", "dsift", "--iterations", "2"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]  # one line, the last one
    assert errors[0].startswith("error: this run needs about") and "GB is available -- pass" in errors[0]
    assert "--resolution" in errors[0]
    assert not out.exists() and not work.exists()
